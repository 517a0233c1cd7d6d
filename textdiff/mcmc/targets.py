"""Targets ``log π(x)`` for Metropolis-Hastings constrained generation (docs/mcmc.md#objective-and-target).

A target is any object with ``log_prob(states) -> Tensor[B]`` (float64; ``-inf`` for forbidden states) where each
state has ``.tokens`` (ids in the proposal's token space) and ``.blocks`` (keyword index per position, -1 if free).

Design decisions (docs/numerics.md#d8):

* The fluency term is ``γ · log p_LM(text + EOS | BOS)``, a sum of float64 log-softmax values; ``γ = 0.8`` (Su);
  an optional length bonus ``λ`` per scored token (a soft term) counters the LM's preference for short texts.
  The state lives in the proposal model's token space; ``to_lm_ids`` maps it to the scorer's ids (re-tokenising the
  decoded text when the spaces differ, the identity when the proposal is the causal LM itself).
* Hard constraints (length bounds, banned words, ``forbidden`` rules on (state, text)) give ``-inf``; keywords are
  guaranteed by protection (docs/mcmc.md#keyword-and-protected-token-rules) and kept whole words by
  ``KeywordMeasure(continuation=...)`` (no word-continuing token right after a keyword block).
* Soft terms: any callables ``texts -> sequence of floats`` added to ``log π``.
* ``KeywordMeasure``: the chain lives on (sequence, protection mask) pairs, so its sequence marginal is
  ``π(x) N_K(x)``; dividing by ``N_K`` makes the sequence marginal ``π`` (docs/mcmc.md#target-on-pairs).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch

from textdiff.mcmc.prompted import CACHED_TOKENS, Prompt, prompted_engine, row_log_probs


class CausalLMScorer:
    """Sentence log-probabilities under an HF causal LM (sums of float64 log-softmax values,
    docs/numerics.md#log-space-arithmetic).

    ``log_prob_ids(seqs)`` returns ``Σ_j log p(x_j | prefix, x_{<j})`` over the tokens of each sequence followed by
    EOS, conditioned on ``prefix_ids`` (default: the BOS token), or per row on ``prefixes[i]`` (one prompt per keyword
    set, docs/mcmc.md#keyword-conditioned-target). Each prefix runs once (the last ``max_prefixes`` are kept) and
    every row after it reuses its keys and values, so only the sentence tokens cost a forward pass; on the Llama-layout
    CPU engine every token after a prefix is computed once and kept (up to ``cached_tokens``,
    docs/mcmc.md#a-tree-of-scored-tokens), so a row that starts like one scored before pays only for the rest. Rows
    of all prefixes share the pass, and a row's score never depends on its batchmates or on what is kept
    (:mod:`textdiff.mcmc.prompted`).

    ``prompt_head``: ids that many prefixes start with (the worked examples of every keyword set's instruction): run
    once, and every prefix that starts with them and goes on runs only its own tokens after them, always, whatever
    is kept (docs/mcmc.md#rows-after-prompts).
    """

    def __init__(self, model, tokenizer, prefix_ids: Sequence[int] | None = None, max_batch_tokens: int = 4096,
                 max_prefixes: int = 64, cached_tokens: int = CACHED_TOKENS, prompt_head: Sequence[int] = ()):
        self.model, self.tokenizer = model, tokenizer
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.prefix_ids = list(prefix_ids) if prefix_ids is not None else [bos]
        if not self.prefix_ids:
            raise ValueError("prefix_ids must hold at least one token (e.g. BOS)")
        self.eos_id = tokenizer.eos_token_id
        self.max_batch_tokens, self.max_prefixes = max_batch_tokens, max_prefixes
        self.engine = prompted_engine(model, cached_tokens)
        self.prompts: OrderedDict[tuple[int, ...], Prompt] = OrderedDict()
        self.prompt_head = tuple(prompt_head)

    def clear(self) -> None:
        """Forget every prompt run and every token computed (the engine's memory; scores do not change)."""
        self.prompts.clear()
        self.engine.clear()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of ``texts`` without special tokens."""
        return [self.tokenizer.encode(text, add_special_tokens=False) for text in texts]

    def log_prob_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``log p(text + EOS | prefix)`` for each text (float64)."""
        return self.log_prob_ids(self.encode(texts))

    def prompt(self, prefix: Sequence[int]) -> Prompt:
        """A prefix run once (:class:`~textdiff.mcmc.prompted.Prompt`: its keys and values and ``log p(· | prefix)``),
        kept for later calls (the least recently used of more than ``max_prefixes`` dropped first); a prefix that goes
        on after ``prompt_head`` runs after the head's prompt (itself kept as a prefix)."""
        key = tuple(prefix)
        if key not in self.prompts:
            if not key:
                raise ValueError("prefixes must hold at least one token each (e.g. BOS)")
            head = self.prompt_head
            after = self.prompt(head) if head and len(key) > len(head) and key[: len(head)] == head else None
            self.prompts[key] = self.engine.prompt(key, after=after)
            while len(self.prompts) > self.max_prefixes:
                self.prompts.popitem(last=False)
        self.prompts.move_to_end(key)
        return self.prompts[key]

    @torch.no_grad()
    def log_prob_ids(self, seqs: Sequence[Sequence[int]], prefixes: Sequence[Sequence[int]] | None = None
                     ) -> torch.Tensor:
        """``log p(ids + EOS | prefix)`` for each id sequence (float64), in chunks of at most ``max_batch_tokens``
        tokens; the prefix of row ``i`` is ``prefixes[i]`` when given, else ``prefix_ids``."""
        if prefixes is not None and len(prefixes) != len(seqs):
            raise ValueError(f"prefixes must hold one prefix per sequence, got {len(prefixes)} for {len(seqs)}")
        full = [[*seq, self.eos_id] for seq in seqs]
        prompts = [self.prompt(self.prefix_ids if prefixes is None else prefixes[i]) for i in range(len(seqs))]
        return row_log_probs(self.engine, full, prompts, self.max_batch_tokens)


def keyword_placements(tokens: Sequence[int], spans: Sequence[Sequence[int]],
                       continuation: frozenset[int] = frozenset()) -> int:
    """``N_K(x)``: ways to place ``spans`` as ordered, contiguous, non-overlapping blocks in ``tokens``
    (docs/mcmc.md#target-on-pairs), each a whole word: not followed by a ``continuation`` token (a ``##`` piece would
    glue onto the keyword)."""
    n = len(tokens)
    ways = [1] * (n + 1)  # ways[p]: placements of the spans processed so far that end at or before position p
    for span in spans:
        span = list(span)
        new = [0] * (n + 1)
        for end in range(1, n + 1):
            new[end] = new[end - 1]
            start = end - len(span)
            whole = end == n or tokens[end] not in continuation
            if start >= 0 and whole and list(tokens[start:end]) == span:
                new[end] += ways[start]
        ways = new
    return ways[n]


def keywords_whole(state, continuation: frozenset[int]) -> bool:
    """No keyword block of ``state`` is followed by a ``continuation`` token."""
    t, b = state.tokens, state.blocks
    return not any(b[i] >= 0 and b[i + 1] != b[i] and t[i + 1] in continuation for i in range(len(t) - 1))


def keyword_spans(state) -> list[tuple[int, ...]]:
    """The keyword blocks of a state, in chain order."""
    spans: dict[int, list[int]] = {}
    for token, block in zip(state.tokens, state.blocks):
        if block >= 0:
            spans.setdefault(block, []).append(token)
    return [tuple(spans[k]) for k in sorted(spans)]


class KeywordMeasure:
    """``log π'(x, m) = log π(x) − log N_K(x)``: makes the sequence marginal of the pair chain ``π`` (the target on
    pairs; see the module docs).

    With ``continuation`` ids (word-continuing tokens, :func:`textdiff.support.continuation_pieces`) keywords
    must stay whole words: ``π'(x, m) = 0`` when a block of ``m`` is followed by one, and ``N_K`` counts only whole
    placements, so the sequence marginal is ``π`` restricted to sequences holding every keyword as a whole word."""

    def __init__(self, target, continuation: Sequence[int] = ()):
        self.target, self.continuation = target, frozenset(continuation)

    def log_prob(self, states) -> torch.Tensor:
        out = torch.full((len(states),), -math.inf, dtype=torch.float64)
        whole = [i for i, s in enumerate(states) if keywords_whole(s, self.continuation)]
        if whole:
            kept = [states[i] for i in whole]
            counts = [keyword_placements(s.tokens, keyword_spans(s), self.continuation) for s in kept]
            out[whole] = self.target.log_prob(kept) - torch.tensor([math.log(c) for c in counts], dtype=torch.float64)
        return out


class ConstrainedLMTarget:
    """``log π(x) = γ · log p_LM(x | prompt) + λ · (LM tokens + 1) + Σ soft terms``, ``-inf`` outside the hard
    constraints (docs/mcmc.md#objective-and-target; ``λ = length_bonus`` nats per scored token, default 0).

    The prompt is the scorer's own prefix, or with ``prompts`` the prefix ``prompts[state.group]`` of the state's
    keyword set (docs/mcmc.md#keyword-conditioned-target): one declared ``π`` per set.

    ``decode`` maps state tokens to text (for banned words and soft terms); ``to_lm_ids`` maps state tokens to the
    scorer's ids. Hard constraints: ``min_length <= len(tokens) <= max_length``, no banned word (whole words,
    case-insensitive) in the decoded text, and no rule of ``forbidden`` (``(state, text) -> bool``) true.
    """

    def __init__(
        self,
        scorer: CausalLMScorer,
        decode: Callable[[Sequence[int]], str],
        to_lm_ids: Callable[[Sequence[int]], list[int]],
        gamma: float = 0.8,
        length_bonus: float = 0.0,
        min_length: int = 1,
        max_length: int = 10**9,
        banned: Sequence[str] = (),
        soft: Sequence[Callable[[list[str]], Sequence[float]]] = (),
        prompts: Mapping[int, Sequence[int]] | None = None,
        forbidden: Sequence[Callable[[object, str], bool]] = (),
    ):
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if min_length < 0 or max_length < min_length:
            raise ValueError(f"need 0 <= min_length <= max_length, got {min_length}, {max_length}")
        banned = [banned] if isinstance(banned, str) else list(banned)
        if not all(isinstance(word, str) and word.strip() for word in banned):
            raise ValueError(f"banned must be a list of non-empty words, got {banned!r}")
        self.scorer, self.decode, self.to_lm_ids = scorer, decode, to_lm_ids
        self.gamma, self.length_bonus, self.min_length, self.max_length = gamma, length_bonus, min_length, max_length
        self.banned = re.compile(r"\b(" + "|".join(map(re.escape, banned)) + r")\b", re.I) if banned else None
        self.soft, self.prompts, self.forbidden = list(soft), prompts, list(forbidden)

    def log_prob(self, states) -> torch.Tensor:
        out = torch.full((len(states),), -math.inf, dtype=torch.float64)
        texts = [self.decode(s.tokens) for s in states]
        allowed = [
            i for i, (s, text) in enumerate(zip(states, texts))
            if self.min_length <= len(s.tokens) <= self.max_length
            and not (self.banned and self.banned.search(text))
            and not any(rule(s, text) for rule in self.forbidden)
        ]
        if not allowed:
            return out
        lm_ids = [self.to_lm_ids(states[i].tokens) for i in allowed]
        lengths = torch.tensor([len(ids) + 1 for ids in lm_ids], dtype=torch.float64)
        prefixes = None if self.prompts is None else [self.prompts[states[i].group] for i in allowed]
        # a scorer need not take per-row prompts when the target has none
        lm_log_probs = self.scorer.log_prob_ids(lm_ids) if prefixes is None else self.scorer.log_prob_ids(
            lm_ids, prefixes)
        values = self.gamma * lm_log_probs + self.length_bonus * lengths
        for term in self.soft:
            values = values + torch.as_tensor(list(term([texts[i] for i in allowed])), dtype=torch.float64)
        out[allowed] = values
        return out
