"""Keyword-to-sentence generation, textdiff's main job (``textdiff generate``; ALGORITHMS.md §7).

``KeywordGenerator`` wires the pieces: proposal (masked LM by default, or the causal LM as in Su's CGMH), target
``γ · log p_LM(text + EOS | BOS)`` under SmolLM2 (``targets.ConstrainedLMTarget``), keyword blocks, annealing and
batched chains (``mh.MetropolisHastings``).

Design decisions (§10):

* D8 target: ``γ · log p_LM(text + EOS | prompt)``; for chat LMs (SmolLM2-Instruct) the prompt is an empty assistant
  turn ``<|im_start|>assistant\\n`` and EOS is ``<|im_end|>`` (it separates fluent sentences from keyword lists far
  better than BOS alone); the prompt's KV cache is computed once.
* D8 state space = the proposal's tokens. With the MLM proposal the state is uncased WordPiece ids; the text is the
  WordPiece decoding with its first letter capitalised followed by a fixed ``end`` (default ``"."``, outside the
  state, also shown to the MLM as right context); SmolLM2 re-tokenises that text. With ``proposal="lm"`` the state is
  SmolLM2 ids and keyword spans are the tokens of ``" " + keyword``.
* Target length bonus ``λ = 1.5`` nats per SmolLM2 token: ``γ = 0.8`` alone still ranks keyword lists ("Dog caught
  a frisbee.") above fluent longer sentences, so the annealed chains shrank to near keyword lists (CommonGen BLEU-4
  0 at λ = 0); with λ = 1.5 fluent sentences win ("A dog catches a frisbee in the park." > "A dog frisbee catch.").
* Proposal: MLM conditional (special and ``[unused]`` ids excluded) restricted to its top-20, renormalised, ``ε = 0``:
  the full conditional of the small MLM proposed rare junk tokens and 2-3 % of moves were accepted; top-20 gives
  7-16 % and better sentences. The chain then samples π on the communicating class of its start (§7.5); set
  ``top_k=None`` or ``epsilon > 0`` for full support. Move probabilities 1/3; ``γ = 0.8``; ``max_length = 24`` proposal tokens; target on sequences
  (``π/N_K``).
* Unordered keywords: every (order x inflected form) start is ranked by its target ``log π`` and chains start from
  the best ``chains`` of them; each chain keeps the best-π state it visits (D9 geometric annealing 1 -> 0.05 at 80 %
  of the steps); the ``n`` best distinct sentences are returned.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from textdiff import rng
from textdiff.mcmc.keywords import candidate_starts, inflections, parse_keywords
from textdiff.mcmc.mh import MetropolisHastings, State, temperature_schedule
from textdiff.mcmc.proposals import CausalLMProposal, MLMProposal
from textdiff.mcmc.targets import CausalLMScorer, ConstrainedLMTarget, KeywordMeasure, keyword_spans
from textdiff.models.loading import continuation_pieces

MAX_STARTS = 64
CHAT_PROMPT = "<|im_start|>assistant\n"


def scoring_prefix(tokenizer, prompt: str | None) -> list[int] | None:
    """Prefix ids the LM conditions on: ``prompt`` when given, else (chat-format LMs such as SmolLM2-Instruct) an
    empty assistant turn ``<|im_start|>assistant\\n``, else ``None`` (= BOS only)."""
    if prompt is None and "<|im_start|>" in tokenizer.get_vocab():
        prompt = CHAT_PROMPT
    return None if prompt is None else tokenizer.encode(prompt, add_special_tokens=False)


@dataclass
class Sentence:
    """One generated sentence with its scores."""

    text: str
    log_pi: float
    lm_log_prob: float
    lm_tokens: int
    keywords: list[str]
    chain: int
    acceptance: float

    def to_dict(self) -> dict:
        return asdict(self)


def check_settings(n: int = 1, steps: int = 200, chains: int | None = None, temperature: float = 1.0,
                   final_temperature: float = 0.05, output: str = "best", **_) -> None:
    """``ValueError`` naming the first out-of-range generation setting (cheap; runs before models load)."""
    for name, value in (("n", n), ("steps", steps), ("chains", 1 if chains is None else chains)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in (("temperature", temperature), ("final_temperature", final_temperature)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if output not in ("best", "final"):
        raise ValueError(f"output must be 'best' or 'final', got {output!r}")


def capitalize(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:]


class KeywordGenerator:
    """Generate sentences containing keywords with MH chains (models loaded once, reused across calls)."""

    def __init__(self, lm, lm_tokenizer, mlm=None, mlm_tokenizer=None, *, proposal: str = "mlm", gamma: float = 0.8,
                 length_bonus: float = 1.5,
                 max_length: int = 24, end: str = ".", top_k: int | None = 20, epsilon: float = 0.0,
                 lm_top_k: int = 64, prompt: str | None = None):
        if proposal not in ("mlm", "lm"):
            raise ValueError(f"proposal must be 'mlm' or 'lm', got {proposal!r}")
        if proposal == "mlm" and mlm is None:
            raise ValueError("proposal='mlm' needs a masked LM (mlm=...)")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        prefix = scoring_prefix(lm_tokenizer, prompt)
        self.scorer = CausalLMScorer(lm, lm_tokenizer, prefix_ids=prefix)
        self.lm_tokenizer, self.mlm_tokenizer = lm_tokenizer, mlm_tokenizer
        self.kind, self.gamma, self.max_length, self.end = proposal, gamma, max_length, end
        self.length_bonus = length_bonus
        self.continuation = continuation_pieces(mlm_tokenizer if proposal == "mlm" else lm_tokenizer)
        self.last_result = None  # the MHResult of the latest ``generate`` call (diagnostics)
        if proposal == "mlm":
            end_ids = mlm_tokenizer.encode(end, add_special_tokens=False) if end else []
            self.proposal = MLMProposal(mlm, mlm_tokenizer, top_k=top_k, epsilon=epsilon, suffix_ids=end_ids)
        else:
            self.proposal = CausalLMProposal(lm, lm_tokenizer, top_k=lm_top_k, epsilon=epsilon, prefix_ids=prefix,
                                             suffix_ids=lm_tokenizer.encode(end, add_special_tokens=False))

    # --- token spaces -------------------------------------------------------------------------------------------
    def decode(self, tokens: Sequence[int]) -> str:
        """The sentence a state stands for."""
        if self.kind == "mlm":
            return capitalize(self.mlm_tokenizer.decode(list(tokens)) + self.end)
        return capitalize(self.lm_tokenizer.decode(list(tokens)) + self.end)

    def to_lm_ids(self, tokens: Sequence[int]) -> list[int]:
        if self.kind == "mlm":
            return self.lm_tokenizer.encode(self.decode(tokens), add_special_tokens=False)
        return list(tokens) + self.lm_tokenizer.encode(self.end, add_special_tokens=False)

    def keyword_span(self, word: str) -> tuple[int, ...]:
        """Token span of one keyword in the state space; ``ValueError`` if the tokenizer cannot encode it."""
        if self.kind == "mlm":
            tok = self.mlm_tokenizer
            ids = tok.encode(word, add_special_tokens=False)
            bad = not ids or tok.unk_token_id in ids
        else:
            ids = self.lm_tokenizer.encode(" " + word, add_special_tokens=False)
            bad = not ids or self.lm_tokenizer.decode(ids).strip() != word
        if bad:
            raise ValueError(f"keywords: {word!r} cannot be encoded by the proposal tokenizer")
        return tuple(ids)

    def keyword_forms(self, word: str, inflect: bool) -> list[tuple[int, ...]]:
        """The lemma's span, plus (``inflect``) the inflected forms that are single tokens of the vocabulary."""
        spans = [self.keyword_span(word)]
        if inflect:
            for form in inflections(word)[1:]:
                try:
                    span = self.keyword_span(form)
                except ValueError:
                    continue
                if len(span) == 1 and span not in spans:
                    spans.append(span)
        return spans

    # --- generation ---------------------------------------------------------------------------------------------
    def make_target(self, min_length: int, banned: Sequence[str], soft: Sequence[Callable]):
        return KeywordMeasure(ConstrainedLMTarget(
            self.scorer, self.decode, self.to_lm_ids, gamma=self.gamma, length_bonus=self.length_bonus,
            min_length=min_length, max_length=self.max_length, banned=banned, soft=soft),
            continuation=self.continuation)

    def generate(self, keywords: str | Iterable[str], n: int = 1, *, steps: int = 200, chains: int | None = None,
                 seed: int | None = None, inflect: bool = False, schedule: str = "geometric",
                 temperature: float = 1.0, final_temperature: float = 0.05, output: str = "best",
                 min_length: int = 1, banned: Sequence[str] = (), soft: Sequence[Callable] = (),
                 progress: bool = False) -> list[Sentence]:
        """``n`` sentences containing every keyword, best first (see the module docstring for the method)."""
        words = parse_keywords(keywords)
        check_settings(n=n, steps=steps, chains=chains, temperature=temperature,
                       final_temperature=final_temperature, output=output)
        chains = max(n, 4) if chains is None else chains
        forms = [self.keyword_forms(w, inflect) for w in words]
        if sum(len(f[0]) for f in forms) > self.max_length:
            raise ValueError(f"max_length={self.max_length} is smaller than the {sum(len(f[0]) for f in forms)} "
                             f"keyword tokens; raise max_length or use fewer keywords")
        generator = rng.make_generator(seed)
        target = self.make_target(min_length, banned, soft)
        starts = [State.from_keywords(spans) for spans in candidate_starts(forms, MAX_STARTS, generator)]
        starts = [s for s in starts if len(s.tokens) <= self.max_length]
        start_scores = target.log_prob(starts)
        ranked = torch.argsort(start_scores, descending=True, stable=True).tolist()
        initial = [starts[ranked[c % len(ranked)]] for c in range(chains)]
        sampler = MetropolisHastings(self.proposal, target, max_length=self.max_length)
        temperatures = temperature_schedule(steps, schedule, temperature, final_temperature)
        result = sampler.run(initial, steps, temperatures=temperatures, generator=generator, progress=progress)
        self.last_result = result
        states, scores = (result.best, result.best_log_pi) if output == "best" else (result.final, result.final_log_pi)
        order = sorted(range(chains), key=lambda c: -scores[c])
        lm_scores = self.scorer.log_prob_ids([self.to_lm_ids(states[c].tokens) for c in order])
        sentences, seen = [], set()
        for rank, c in enumerate(order):
            text = self.decode(states[c].tokens)
            if text in seen:
                continue
            seen.add(text)
            tokenizer = self.lm_tokenizer if self.kind == "lm" else self.mlm_tokenizer
            used = [tokenizer.decode(list(s)).strip() for s in keyword_spans(states[c])]
            sentences.append(Sentence(text, scores[c], float(lm_scores[rank]),
                                      len(self.to_lm_ids(states[c].tokens)) + 1, used, c,
                                      result.accepted[c] / result.proposed[c]))
        return sentences[:n]


@functools.lru_cache(maxsize=4)
def default_generator(lm: str | None = None, mlm: str | None = None, device: str = "cpu", proposal: str = "mlm"
                      ) -> KeywordGenerator:
    """A ``KeywordGenerator`` on the default (or named) models, loaded once per process."""
    from textdiff.models.loading import load_lm, load_mlm

    lm_model, lm_tok = load_lm(lm, device=device)
    mlm_model, mlm_tok = load_mlm(mlm, device=device) if proposal == "mlm" else (None, None)
    return KeywordGenerator(lm_model, lm_tok, mlm_model, mlm_tok, proposal=proposal)


def generate(keywords: str | Iterable[str], n: int = 1, *, lm: str | None = None, mlm: str | None = None,
             device: str = "cpu", proposal: str = "mlm", **kwargs) -> list[Sentence]:
    """``n`` sentences containing every keyword, on the default SmolLM2 + MiniLM models (the CLI's API)."""
    parse_keywords(keywords)
    check_settings(n, **kwargs)
    return default_generator(lm, mlm, device, proposal).generate(keywords, n, **kwargs)
