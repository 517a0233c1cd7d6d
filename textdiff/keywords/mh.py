"""Keyword sentences by Metropolis-Hastings (the ``mh`` method;
docs/mcmc.md#metropolis-hastings-constrained-generation).

``KeywordGenerator`` wires the engine's pieces: a registered proposal (masked LM by default, or the causal LM as in
Su's CGMH), the target ``γ · log p_LM(text + EOS | prompt) + λ · #tokens`` under SmolLM2 (``ConstrainedLMTarget``),
with by default one prompt per keyword set, an instruction naming its keywords
(docs/mcmc.md#keyword-conditioned-target), keyword blocks (``KeywordMeasure``), annealing and batched chains
(``MetropolisHastings``). Chains start from the best-scoring of the keyword orders (and, with ``inflect``,
inflected forms) and of the LM's drafts with the missing keywords inserted (docs/mcmc.md#drafts-as-start-states);
each keeps the best state it visits. Why these defaults: docs/mcmc.md#defaults-of-textdiff-generate.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import torch

from textdiff import checks, rng
from textdiff.keywords.drafts import (
    INSTRUCTION,
    blocks_in_order,
    instruction_head,
    instruction_prefix,
    locate_keywords,
    sample_drafts,
)
from textdiff.keywords.parse import capitalize, detokenize, inflections, parse_keywords
from textdiff.keywords.result import Sentence
from textdiff.mcmc.mh import ChainStreams, MetropolisHastings, MHResult, State, temperature_schedule
from textdiff.mcmc.proposals import PROPOSALS, ProposalModels
from textdiff.mcmc.targets import CausalLMScorer, ConstrainedLMTarget, KeywordMeasure, keyword_spans

MAX_STARTS = 64
GAMMA, LENGTH_BONUS = 1.0, 0.75  # calibrated for the instruction target (docs/mcmc.md#defaults-of-textdiff-generate)
STEPS, DRAFTS = 30, 8  # the default preset (textdiff.keywords.presets)
CHAT_PROMPT = "<|im_start|>assistant\n"
OUTPUTS = ("best", "final")
#: a word for the distinct-keywords rule: letters, with inner hyphens and apostrophes ("t-shirt", "don't" are one)
WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
Insertion = tuple[tuple[int, ...], int]  # a keyword span and the slot it goes before


class SetPlan(NamedTuple):
    """A keyword set ready to run: its place in the input, keyword forms, keyword-order starts, generator and the
    seed of its drafts."""

    index: int
    forms: list[list[tuple[int, ...]]]
    starts: list[State]
    generator: torch.Generator
    draft_seed: int


def scoring_prefix(tokenizer, prompt: str | None) -> list[int] | None:
    """Prefix ids the LM conditions on: ``prompt`` when given, else (chat-format LMs such as SmolLM2-Instruct) an
    empty assistant turn ``<|im_start|>assistant\\n``, else ``None`` (= BOS only)."""
    if prompt is None and "<|im_start|>" in tokenizer.get_vocab():
        prompt = CHAT_PROMPT
    return None if prompt is None else tokenizer.encode(prompt, add_special_tokens=False)


def check_settings(n: int = 1, steps: int = STEPS, chains: int | None = None, temperature: float = 1.0,
                   final_temperature: float = 0.05, output: str = "best", drafts: int = DRAFTS, **_) -> None:
    """``ValueError`` naming the first out-of-range generation setting (cheap; runs before models load)."""
    checks.positive_int("n", n)
    checks.positive_int("steps", steps)
    checks.positive_int("drafts", drafts, minimum=0)
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


def repeats_a_keyword(state: State, text: str, decode: Callable[[Sequence[int]], str]) -> bool:
    """Whether a word of a keyword block occurs again in ``text``, as itself or as one of the forms
    :func:`inflections` links it with (lemma ↔ inflected form; docs/mcmc.md#keyword-conditioned-target)."""
    words = Counter(WORD.findall(text.lower()))
    for span in keyword_spans(state):
        for key in WORD.findall(decode(span).lower()):
            if sum(n for word, n in words.items() if word == key or word in inflections(key)
                   or key in inflections(word)) > 1:
                return True
    return False


def with_block(state: State, span: tuple[int, ...], slot: int) -> State:
    """``state`` with the keyword ``span`` inserted as a new protected block before position ``slot`` (blocks
    renumbered in sentence order)."""
    t, b = state.tokens, state.blocks
    return State(t[:slot] + span + t[slot:], blocks_in_order(b[:slot] + (max(b, default=-1) + 1,) * len(span)
                                                             + b[slot:]), state.group)


def best_insertions(states: Sequence[State], options: Sequence[list[Insertion]], target: KeywordMeasure
                    ) -> list[Insertion]:
    """Per state, the ``(span, slot)`` of its options whose insertion ``target`` scores best (one batch)."""
    candidates = [with_block(state, span, slot) for state, row in zip(states, options) for span, slot in row]
    scores = target.log_prob(candidates).tolist()
    best, offset = [], 0
    for row in options:
        best.append(row[max(range(len(row)), key=lambda i: scores[offset + i])])
        offset += len(row)
    return best


class KeywordGenerator:
    """Generate sentences containing keywords with MH chains (models loaded once, reused across calls).

    ``proposal`` names a registered proposal (:data:`textdiff.mcmc.proposals.PROPOSALS`; ``mlm`` or ``lm``);
    ``top_k`` applies to the masked-LM proposal, ``lm_top_k`` to the causal-LM one. ``instruction`` (a template
    with ``{keywords}``) makes the target of each set ``log p_LM(text | that set's instruction)``; ``None`` scores
    every set under the fixed ``prompt`` (the empty assistant turn by default), the target before issue 15.
    ``distinct_keywords`` forbids (a hard constraint) sentences that repeat a keyword outside its block ("The costume
    is a costume of a dancer"), a mode of the instruction target.
    """

    def __init__(self, lm, lm_tokenizer, mlm=None, mlm_tokenizer=None, *, proposal: str = "mlm", gamma: float = GAMMA,
                 length_bonus: float = LENGTH_BONUS, max_length: int = 24, end: str = ".", top_k: int | None = 20,
                 epsilon: float = 0.0, lm_top_k: int = 64, prompt: str | None = None,
                 instruction: str | None = INSTRUCTION, distinct_keywords: bool = True):
        proposal_class = PROPOSALS.get_checked(proposal)
        checks.positive_int("max_length", max_length)
        checks.positive_float("gamma", gamma)
        checks.finite_float("length_bonus", length_bonus)
        if instruction is not None:
            instruction_prefix(lm_tokenizer, ["x"], instruction)  # ValueError naming a malformed instruction
        self.instruction, self.distinct_keywords = instruction, distinct_keywords
        prefix = scoring_prefix(lm_tokenizer, prompt)
        head = () if instruction is None else instruction_head(lm_tokenizer, instruction)
        self.scorer = CausalLMScorer(lm, lm_tokenizer, prefix_ids=prefix, prompt_head=head)
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
    def repeats_a_keyword(self, state: State, text: str) -> bool:
        """The ``distinct_keywords`` rule: a keyword's word (or a linked form) occurs outside its block."""
        return repeats_a_keyword(state, text, lambda span: detokenize(self.tokenizer.decode(list(span))))

    def set_prompt(self, words: Sequence[str]) -> list[int] | None:
        """The scorer prefix of a keyword set: its instruction's chat prompt, or ``None`` (the fixed prompt)."""
        return None if self.instruction is None else instruction_prefix(self.lm_tokenizer, words, self.instruction)

    def make_target(self, min_length: int, banned: Sequence[str], soft: Sequence[Callable],
                    prompts: dict[int, list[int]] | None = None) -> KeywordMeasure:
        """The target of a run; ``prompts`` maps each state's ``group`` (its set) to that set's scorer prefix."""
        return KeywordMeasure(ConstrainedLMTarget(
            self.scorer, self.decode, self.to_lm_ids, gamma=self.gamma, length_bonus=self.length_bonus,
            min_length=min_length, max_length=self.max_length, banned=banned, soft=soft, prompts=prompts,
            forbidden=[self.repeats_a_keyword] if self.distinct_keywords else []),
            continuation=self.proposal.support.continuation_ids)

    def keyword_starts(self, words: Sequence[str], generator: torch.Generator, inflect: bool, banned: Sequence[str],
                       group: int = 0) -> tuple[list[list[tuple[int, ...]]], list[State]]:
        """``(forms, starts)`` of one keyword set: each keyword's token spans (lemma first; with ``inflect`` its
        single-token inflections) and up to ``MAX_STARTS`` states of ``group`` holding the keywords in some order and
        form, drawn from ``generator``; ``ValueError`` naming what makes the set impossible."""
        clash = sorted({b for b in banned for w in words if b.lower() == w.lower()})
        if clash:
            raise ValueError(f"banned words {clash} are also keywords; a sentence cannot both hold and avoid them")
        forms = [self.keyword_forms(w, inflect) for w in words]
        needed = sum(len(f[0]) for f in forms)
        if needed > self.max_length:
            raise ValueError(f"max_length={self.max_length} is smaller than the {needed} keyword tokens; raise "
                             "max_length or use fewer keywords")
        return forms, [State.from_keywords(spans, group) for spans in candidate_starts(forms, MAX_STARTS, generator)]

    def start_states(self, starts: Sequence[Sequence[State]], chains: int, target: KeywordMeasure
                     ) -> list[list[State]]:
        """Per set, ``chains`` start states: the best-scoring under ``target`` of its ``starts`` (cycled when fewer);
        the candidates of every set scored in one batch."""
        kept = [list(dict.fromkeys(s for s in states if len(s.tokens) <= self.max_length)) for states in starts]
        scores = target.log_prob([state for states in kept for state in states]).split([len(k) for k in kept])
        chosen = []
        for states, score in zip(kept, scores):
            ranked = torch.argsort(score, descending=True, stable=True).tolist()
            chosen.append([states[ranked[c % len(ranked)]] for c in range(chains)])
        return chosen

    def draft_states(self, forms: Sequence[Sequence[Sequence[tuple[int, ...]]]], texts: Sequence[Sequence[str]],
                     target: KeywordMeasure, groups: Sequence[int]) -> list[list[State]]:
        """Per set (its keyword ``forms``, its LM drafts ``texts``, its ``group``), the valid states made of its drafts
        (``sample_drafts``; docs/mcmc.md#drafts-as-start-states): the keyword forms a draft holds become protected
        blocks, and each missing keyword is inserted, at the word boundary and then in the form that ``target`` scores
        best, one keyword per round for the drafts of every set at once."""
        continuation = frozenset(self.proposal.support.continuation_ids)
        pending: list[tuple[int, State, list[int]]] = []  # (set, state, its missing keywords)
        for s, (set_forms, set_texts, group) in enumerate(zip(forms, texts, groups)):
            for text in set_texts:
                tokens = tuple(self.proposal.keyword_ids(text))
                found = locate_keywords(tokens, set_forms, continuation)
                missing = [k for k, hit in enumerate(found) if hit is None]
                if not tokens or len(tokens) + sum(len(set_forms[k][0]) for k in missing) > self.max_length:
                    continue
                blocks = [-1] * len(tokens)
                for k, hit in enumerate(found):
                    if hit is not None:
                        blocks[hit[0]: hit[0] + len(hit[1])] = [k] * len(hit[1])
                pending.append((s, State(tokens, blocks_in_order(blocks), group), missing))
        done: list[list[State]] = [[] for _ in forms]
        while True:
            for s, state, missing in pending:
                if not missing:
                    done[s].append(state)
            pending = [entry for entry in pending if entry[2]]
            if not pending:
                return done
            states = [state for _, state, _ in pending]
            slots = [[(forms[s][missing[0]][0], j) for j in state.insertion_slots()
                      if j == len(state.tokens) or state.tokens[j] not in continuation]
                     for s, state, missing in pending]
            at = [slot for _, slot in best_insertions(states, slots, target)]
            best = best_insertions(states, [[(span, slot) for span in forms[s][missing[0]]]
                                            for slot, (s, _, missing) in zip(at, pending)], target)
            pending = [(s, with_block(state, *choice), missing[1:])
                       for choice, (s, state, missing) in zip(best, pending)]

    def run_many(self, keyword_sets: Sequence[str | Iterable[str]], **options) -> list[MHResult | ValueError]:
        """The annealed MH chains of many keyword sets, ``chains`` per set, started from the best of the keyword
        orders and ``drafts`` LM drafts; the chains of several sets share one population (every proposal and
        scoring forward pass; each chain scored under its own set's prompt), at most ``batch_size`` chains at a
        time (:meth:`run_iter`, collected).

        Each set draws from its own generator seeded with ``seed`` (its drafts too), so a set's chains are those of
        :meth:`run` on that set alone, whatever other sets share its batch. A set that cannot run (a keyword the
        models cannot write, a banned keyword…) gets its ``ValueError`` in place of a result.
        """
        return list(self.run_iter(keyword_sets, **options))

    def run_iter(self, keyword_sets: Sequence[str | Iterable[str]], *, steps: int = STEPS, chains: int = 4,
                 seed: int | None = None, inflect: bool = False, schedule: str = "geometric",
                 temperature: float = 1.0, final_temperature: float = 0.05, min_length: int = 1,
                 banned: str | Sequence[str] = (), soft: Sequence[Callable] = (), batch_size: int = 64,
                 drafts: int = DRAFTS, progress: bool = False) -> Iterator[MHResult | ValueError]:
        """:meth:`run_many`'s results one by one, in input order, each as soon as its batch has run (a long
        ``--input`` writes as it goes). Settings are checked and every set is planned before this returns."""
        check_settings(steps=steps, chains=chains, temperature=temperature, final_temperature=final_temperature,
                       drafts=drafts)
        checks.positive_int("batch_size", batch_size)
        banned = [banned] if isinstance(banned, str) else list(banned)
        results: list[MHResult | ValueError | None] = [None] * len(keyword_sets)
        words_of: dict[int, list[str]] = {}
        for index, keywords in enumerate(keyword_sets):
            try:
                words_of[index] = parse_keywords(keywords)
            except (ValueError, TypeError) as err:
                results[index] = err if isinstance(err, ValueError) else ValueError(str(err))
        prompts = None if self.instruction is None else {i: self.set_prompt(w) for i, w in words_of.items()}
        target = self.make_target(min_length, banned, soft, prompts)
        planned: list[SetPlan] = []
        for index, words in words_of.items():
            generator = rng.make_generator(seed)
            try:
                forms, starts = self.keyword_starts(words, generator, inflect, banned, index)
            except ValueError as err:
                results[index] = err
                continue
            draft_seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if drafts else 0
            planned.append(SetPlan(index, forms, starts, generator, draft_seed))
        sampler = MetropolisHastings(self.proposal, target, max_length=self.max_length)
        temperatures = temperature_schedule(steps, schedule, temperature, final_temperature)
        per_batch = max(1, batch_size // chains)

        def batches() -> Iterator[MHResult | ValueError]:  # yields each result once it and all before it are done
            done = 0
            for start in range(0, len(planned), per_batch):
                part = planned[start: start + per_batch]
                texts: list[list[str]] = [[] for _ in part]
                if drafts:  # the drafts of the whole batch in one decoding loop, each set under its own prompt
                    set_prompts = [self.scorer.prefix_ids if prompts is None else prompts[plan.index] for plan in part]
                    texts = sample_drafts(self.scorer, set_prompts, drafts, [plan.draft_seed for plan in part])
                drafted = self.draft_states([plan.forms for plan in part], texts, target, [plan.index for plan in part])
                chosen = self.start_states([plan.starts + more for plan, more in zip(part, drafted)], chains, target)
                streams = ChainStreams([(chains, plan.generator) for plan in part])
                initial = [state for states in chosen for state in states]
                outcome = sampler.run(initial, steps, temperatures=temperatures, generator=streams,
                                      progress=progress)
                for plan, result in zip(part, outcome.split([chains] * len(part))):
                    results[plan.index] = result
                while done < len(results) and results[done] is not None:
                    yield results[done]
                    done += 1
            yield from results[done:]  # sets that could not run, after the last batch

        return batches()

    def run(self, keywords: str | Iterable[str], **options) -> MHResult:
        """The annealed MH chains for one keyword set (:meth:`run_many` on that set alone)."""
        result = self.run_many([keywords], **options)[0]
        if isinstance(result, ValueError):
            raise result
        return result

    def sentences(self, result: MHResult, n: int, output: str = "best", prompt: Sequence[int] | None = None
                  ) -> list[Sentence]:
        """The ``n`` best distinct sentences of a set's chains (their ``best`` or ``final`` states); ``lm_log_prob``
        is conditioned on ``prompt`` (the set's scorer prefix, :meth:`set_prompt`; ``None``: the fixed one)."""
        chains = len(result.final)
        states, scores = (result.best, result.best_log_pi) if output == "best" else (result.final, result.final_log_pi)
        order = [c for c in sorted(range(chains), key=lambda c: -scores[c]) if scores[c] > float("-inf")]
        if not order:
            raise ValueError("no chain reached a sentence that satisfies the constraints; try more steps or fewer "
                             "constraints")
        lm_ids = [self.to_lm_ids(states[c].tokens) for c in order]
        lm_scores = self.scorer.log_prob_ids(lm_ids, None if prompt is None else [prompt] * len(lm_ids))
        sentences, seen = [], set()
        for rank, c in enumerate(order):
            text = self.decode(states[c].tokens)
            if text in seen:
                continue
            seen.add(text)
            used = [detokenize(self.tokenizer.decode(list(s))).strip() for s in keyword_spans(states[c])]
            sentences.append(Sentence(text, used, "mh", scores[c], c, log_pi=scores[c],
                                      lm_log_prob=float(lm_scores[rank]),
                                      lm_tokens=len(lm_ids[rank]) + 1,
                                      acceptance=result.accepted[c] / result.proposed[c]))
        return sentences[:n]

    def generate_many(self, keyword_sets: Sequence[str | Iterable[str]], n: int = 1, **options
                      ) -> list[list[Sentence] | ValueError]:
        """Per keyword set, its ``n`` best distinct sentences (or the ``ValueError`` that stopped it), from
        :meth:`run_many` with ``max(n, 4)`` chains per set unless ``chains`` is given (:meth:`generate_iter`,
        collected)."""
        return list(self.generate_iter(keyword_sets, n, **options))

    def generate_iter(self, keyword_sets: Sequence[str | Iterable[str]], n: int = 1, *, chains: int | None = None,
                      output: str = "best", **options) -> Iterator[list[Sentence] | ValueError]:
        """:meth:`generate_many`'s results one by one, in input order, each as soon as its batch has run."""
        check_settings(n=n, chains=chains, output=output)
        results = self.run_iter(keyword_sets, chains=max(n, 4) if chains is None else chains, **options)
        return (self._sentences_or_error(keywords, result, n, output) for keywords, result in zip(keyword_sets,
                                                                                                   results))

    def _sentences_or_error(self, keywords, result: MHResult | ValueError, n: int, output: str
                            ) -> list[Sentence] | ValueError:
        if isinstance(result, ValueError):
            return result
        try:
            return self.sentences(result, n, output, self.set_prompt(parse_keywords(keywords)))
        except ValueError as err:
            return err

    def generate(self, keywords: str | Iterable[str], n: int = 1, **options) -> list[Sentence]:
        """``n`` distinct sentences containing every keyword, best first (:meth:`generate_many` on one set)."""
        result = self.generate_many([keywords], n, **options)[0]
        if isinstance(result, ValueError):
            raise result
        return result


@functools.lru_cache(maxsize=4)
def default_generator(lm: str | None = None, mlm: str | None = None, device: str = "cpu", proposal: str = "mlm",
                      dtype="auto") -> KeywordGenerator:
    """A ``KeywordGenerator`` on the default (or named) models, loaded once per process (the loaders, and
    transformers with them, are imported on first use, so the CLI starts fast)."""
    from textdiff.models.hub import load_lm, load_mlm

    lm_model, lm_tok = load_lm(lm, device=device, dtype=dtype)
    needs_mlm = PROPOSALS.get_checked(proposal).needs_mlm
    mlm_model, mlm_tok = load_mlm(mlm, device=device, dtype=dtype) if needs_mlm else (None, None)
    return KeywordGenerator(lm_model, lm_tok, mlm_model, mlm_tok, proposal=proposal)
