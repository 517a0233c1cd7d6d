"""Keyword sentences by Metropolis-Hastings (the ``mh`` method;
docs/mcmc.md#metropolis-hastings-constrained-generation).

``KeywordGenerator`` wires the engine's pieces: a registered proposal (masked LM by default, or the causal LM as in
Su's CGMH), the target ``γ · log p_LM(text + EOS | prompt) + λ · #tokens`` under SmolLM2 (``ConstrainedLMTarget``),
keyword blocks (``KeywordMeasure``), annealing and batched chains (``MetropolisHastings``). Chains start from the
best-scoring keyword orders (and, with ``inflect``, inflected forms); each keeps the best state it visits. Why these
defaults (γ 0.8, λ 1.5, top-20 proposals, the chat prompt): docs/mcmc.md#defaults-of-textdiff-generate.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Sequence

import torch

from textdiff import checks, rng
from textdiff.keywords.parse import capitalize, detokenize, inflections, parse_keywords
from textdiff.keywords.result import Sentence
from textdiff.mcmc.mh import ChainStreams, MetropolisHastings, MHResult, State, temperature_schedule
from textdiff.mcmc.proposals import PROPOSALS, ProposalModels
from textdiff.mcmc.targets import CausalLMScorer, ConstrainedLMTarget, KeywordMeasure, keyword_spans

MAX_STARTS = 64
CHAT_PROMPT = "<|im_start|>assistant\n"
OUTPUTS = ("best", "final")


def scoring_prefix(tokenizer, prompt: str | None) -> list[int] | None:
    """Prefix ids the LM conditions on: ``prompt`` when given, else (chat-format LMs such as SmolLM2-Instruct) an
    empty assistant turn ``<|im_start|>assistant\\n``, else ``None`` (= BOS only)."""
    if prompt is None and "<|im_start|>" in tokenizer.get_vocab():
        prompt = CHAT_PROMPT
    return None if prompt is None else tokenizer.encode(prompt, add_special_tokens=False)


def check_settings(n: int = 1, steps: int = 200, chains: int | None = None, temperature: float = 1.0,
                   final_temperature: float = 0.05, output: str = "best", **_) -> None:
    """``ValueError`` naming the first out-of-range generation setting (cheap; runs before models load)."""
    checks.positive_int("n", n)
    checks.positive_int("steps", steps)
    if chains is not None:
        checks.positive_int("chains", chains)
    checks.positive_float("temperature", temperature)
    checks.positive_float("final_temperature", final_temperature)
    checks.one_of("output", output, OUTPUTS)


def candidate_starts(spans: Sequence[Sequence[Sequence[int]]], limit: int, generator: torch.Generator
                     ) -> list[list[tuple[int, ...]]]:
    """Up to ``limit`` distinct keyword-span lists: every order x every form choice, or a random subset.

    ``spans[k]`` holds the token spans of the forms of keyword ``k`` (lemma first).
    """
    total = 1
    for k, forms in enumerate(spans):
        total *= len(forms) * (k + 1)
    if total <= limit:
        combos = [list(order) for forms in itertools.product(*spans) for order in itertools.permutations(forms)]
    else:
        combos, seen = [], set()
        for _ in range(20 * limit):
            if len(combos) == limit:
                break
            u = rng.uniform((2 * len(spans),), generator).tolist()
            forms = [s[int(u[k] * len(s)) % len(s)] for k, s in enumerate(spans)]
            order = sorted(range(len(forms)), key=lambda k: u[len(spans) + k])
            combo = tuple(tuple(forms[k]) for k in order)
            if combo not in seen:
                seen.add(combo)
                combos.append(list(combo))
    return [[tuple(s) for s in combo] for combo in dict.fromkeys(tuple(map(tuple, c)) for c in combos)]


class KeywordGenerator:
    """Generate sentences containing keywords with MH chains (models loaded once, reused across calls).

    ``proposal`` names a registered proposal (:data:`textdiff.mcmc.proposals.PROPOSALS`; ``mlm`` or ``lm``);
    ``top_k`` applies to the masked-LM proposal, ``lm_top_k`` to the causal-LM one.
    """

    def __init__(self, lm, lm_tokenizer, mlm=None, mlm_tokenizer=None, *, proposal: str = "mlm", gamma: float = 0.8,
                 length_bonus: float = 1.5, max_length: int = 24, end: str = ".", top_k: int | None = 20,
                 epsilon: float = 0.0, lm_top_k: int = 64, prompt: str | None = None):
        proposal_class = PROPOSALS.get_checked(proposal)
        checks.positive_int("max_length", max_length)
        prefix = scoring_prefix(lm_tokenizer, prompt)
        self.scorer = CausalLMScorer(lm, lm_tokenizer, prefix_ids=prefix)
        self.lm_tokenizer = lm_tokenizer
        self.gamma, self.length_bonus, self.max_length, self.end = gamma, length_bonus, max_length, end
        models = ProposalModels(lm, lm_tokenizer, mlm, mlm_tokenizer, prefix)
        self.proposal = proposal_class.from_models(models, top_k=top_k, lm_top_k=lm_top_k, epsilon=epsilon,
                                                        suffix=end)
        self.tokenizer = self.proposal.tokenizer
        self.end_ids = lm_tokenizer.encode(end, add_special_tokens=False)

    # --- token spaces -------------------------------------------------------------------------------------------
    def decode(self, tokens: Sequence[int]) -> str:
        """The sentence a state stands for."""
        return capitalize(detokenize(self.tokenizer.decode(list(tokens))) + self.end)

    def to_lm_ids(self, tokens: Sequence[int]) -> list[int]:
        """The scorer's ids of a state: the state itself when it lives in the scorer's vocabulary, else the ids of
        its text."""
        if self.proposal.in_scorer_space:
            return list(tokens) + self.end_ids
        return self.lm_tokenizer.encode(self.decode(tokens), add_special_tokens=False)

    def keyword_span(self, word: str) -> tuple[int, ...]:
        """Token span of one keyword in the state space; ``ValueError`` naming it unless the span writes the word
        back exactly (up to letter case with an uncased vocabulary)."""
        ids = self.proposal.keyword_ids(word)
        written = detokenize(self.tokenizer.decode(ids)).strip() if ids else None
        if written is None or written.lower() != word.lower():
            became = "" if written is None else f" (it would be written {written!r})"
            raise ValueError(f"keyword {word!r} cannot be written exactly by the proposal tokenizer{became}")
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
    def make_target(self, min_length: int, banned: Sequence[str], soft: Sequence[Callable]) -> KeywordMeasure:
        return KeywordMeasure(ConstrainedLMTarget(
            self.scorer, self.decode, self.to_lm_ids, gamma=self.gamma, length_bonus=self.length_bonus,
            min_length=min_length, max_length=self.max_length, banned=banned, soft=soft),
            continuation=self.proposal.support.continuation_ids)

    def start_states(self, keywords: str | Iterable[str], chains: int, generator: torch.Generator, inflect: bool,
                     banned: Sequence[str], target: KeywordMeasure) -> list[State]:
        """``chains`` start states of one keyword set: its best-scoring keyword orders (and, with ``inflect``,
        forms), drawn from ``generator``; ``ValueError`` naming what makes the set impossible."""
        words = parse_keywords(keywords)
        clash = sorted({b for b in banned for w in words if b.lower() == w.lower()})
        if clash:
            raise ValueError(f"banned words {clash} are also keywords; a sentence cannot both hold and avoid them")
        forms = [self.keyword_forms(w, inflect) for w in words]
        needed = sum(len(f[0]) for f in forms)
        if needed > self.max_length:
            raise ValueError(f"max_length={self.max_length} is smaller than the {needed} keyword tokens; raise "
                             "max_length or use fewer keywords")
        starts = [State.from_keywords(spans) for spans in candidate_starts(forms, MAX_STARTS, generator)]
        starts = [s for s in starts if len(s.tokens) <= self.max_length]
        ranked = torch.argsort(target.log_prob(starts), descending=True, stable=True).tolist()
        return [starts[ranked[c % len(ranked)]] for c in range(chains)]

    def run_many(self, keyword_sets: Sequence[str | Iterable[str]], *, steps: int = 200, chains: int = 4,
                 seed: int | None = None, inflect: bool = False, schedule: str = "geometric",
                 temperature: float = 1.0, final_temperature: float = 0.05, min_length: int = 1,
                 banned: str | Sequence[str] = (), soft: Sequence[Callable] = (), batch_size: int = 64,
                 progress: bool = False) -> list[MHResult | ValueError]:
        """The annealed MH chains of many keyword sets, ``chains`` per set; the chains of several sets share one
        population (every proposal and scoring forward pass), at most ``batch_size`` chains at a time.

        Each set draws from its own generator seeded with ``seed``, so a set's chains are those of
        :meth:`run` on that set alone, whatever other sets share its batch. A set that cannot run (a keyword the
        models cannot write, a banned keyword…) gets its ``ValueError`` in place of a result.
        """
        check_settings(steps=steps, chains=chains, temperature=temperature, final_temperature=final_temperature)
        checks.positive_int("batch_size", batch_size)
        banned = [banned] if isinstance(banned, str) else list(banned)
        target = self.make_target(min_length, banned, soft)
        results: list[MHResult | ValueError | None] = [None] * len(keyword_sets)
        ready: list[tuple[int, list[State], torch.Generator]] = []
        for index, keywords in enumerate(keyword_sets):
            generator = rng.make_generator(seed)
            try:
                ready.append((index, self.start_states(keywords, chains, generator, inflect, banned, target),
                              generator))
            except (ValueError, TypeError) as err:
                results[index] = err if isinstance(err, ValueError) else ValueError(str(err))
        sampler = MetropolisHastings(self.proposal, target, max_length=self.max_length)
        temperatures = temperature_schedule(steps, schedule, temperature, final_temperature)
        per_batch = max(1, batch_size // chains)
        for start in range(0, len(ready), per_batch):
            batch = ready[start: start + per_batch]
            streams = ChainStreams([(chains, generator) for _, _, generator in batch])
            initial = [state for _, states, _ in batch for state in states]
            outcome = sampler.run(initial, steps, temperatures=temperatures, generator=streams, progress=progress)
            for (index, _, _), part in zip(batch, outcome.split([chains] * len(batch))):
                results[index] = part
        return results

    def run(self, keywords: str | Iterable[str], **options) -> MHResult:
        """The annealed MH chains for one keyword set (:meth:`run_many` on that set alone)."""
        result = self.run_many([keywords], **options)[0]
        if isinstance(result, ValueError):
            raise result
        return result

    def sentences(self, result: MHResult, n: int, output: str = "best") -> list[Sentence]:
        """The ``n`` best distinct sentences of a set's chains (their ``best`` or ``final`` states)."""
        chains = len(result.final)
        states, scores = (result.best, result.best_log_pi) if output == "best" else (result.final, result.final_log_pi)
        order = [c for c in sorted(range(chains), key=lambda c: -scores[c]) if scores[c] > float("-inf")]
        if not order:
            raise ValueError("no chain reached a sentence that satisfies the constraints; try more steps or fewer "
                             "constraints")
        lm_scores = self.scorer.log_prob_ids([self.to_lm_ids(states[c].tokens) for c in order])
        sentences, seen = [], set()
        for rank, c in enumerate(order):
            text = self.decode(states[c].tokens)
            if text in seen:
                continue
            seen.add(text)
            used = [detokenize(self.tokenizer.decode(list(s))).strip() for s in keyword_spans(states[c])]
            sentences.append(Sentence(text, used, "mh", scores[c], c, log_pi=scores[c],
                                      lm_log_prob=float(lm_scores[rank]),
                                      lm_tokens=len(self.to_lm_ids(states[c].tokens)) + 1,
                                      acceptance=result.accepted[c] / result.proposed[c]))
        return sentences[:n]

    def generate_many(self, keyword_sets: Sequence[str | Iterable[str]], n: int = 1, *, chains: int | None = None,
                      output: str = "best", **options) -> list[list[Sentence] | ValueError]:
        """Per keyword set, its ``n`` best distinct sentences (or the ``ValueError`` that stopped it), from
        :meth:`run_many` with ``max(n, 4)`` chains per set unless ``chains`` is given."""
        check_settings(n=n, chains=chains, output=output)
        results = self.run_many(keyword_sets, chains=max(n, 4) if chains is None else chains, **options)
        out: list[list[Sentence] | ValueError] = []
        for result in results:
            try:
                out.append(result if isinstance(result, ValueError) else self.sentences(result, n, output))
            except ValueError as err:
                out.append(err)
        return out

    def generate(self, keywords: str | Iterable[str], n: int = 1, **options) -> list[Sentence]:
        """``n`` distinct sentences containing every keyword, best first (:meth:`generate_many` on one set)."""
        result = self.generate_many([keywords], n, **options)[0]
        if isinstance(result, ValueError):
            raise result
        return result


@functools.lru_cache(maxsize=4)
def default_generator(lm: str | None = None, mlm: str | None = None, device: str = "cpu", proposal: str = "mlm"
                      ) -> KeywordGenerator:
    """A ``KeywordGenerator`` on the default (or named) models, loaded once per process (the loaders, and
    transformers with them, are imported on first use, so the CLI starts fast)."""
    from textdiff.models.hub import load_lm, load_mlm

    lm_model, lm_tok = load_lm(lm, device=device)
    needs_mlm = PROPOSALS.get_checked(proposal).needs_mlm
    mlm_model, mlm_tok = load_mlm(mlm, device=device) if needs_mlm else (None, None)
    return KeywordGenerator(lm_model, lm_tok, mlm_model, mlm_tok, proposal=proposal)
