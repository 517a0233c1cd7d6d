"""Token proposals ``g(w | context)`` for Metropolis-Hastings edits (docs/mcmc.md#token-proposals; defaults:
docs/numerics.md#d8).

A *context* is ``(tokens, slot)``: the sequence with a placeholder at ``slot`` (the replaced position, or a new
position for an insertion). A proposal model maps a list of contexts to float64 log-probabilities ``[N, V]`` over
its whole vocabulary (``-inf`` outside the support), so both the forward and the reverse probability of any move
can be read off exactly. ``g`` depends on the context only, never on the token being replaced (needed for
exactness).

The MH engine reads contexts as tensors, ``log_probs_at(ids [N, W], lengths [N], slots [N]) -> [N, V]`` on the
device (:func:`context_log_probs`, which falls back to ``log_probs`` on tuples for a proposal without it).

* ``MLMProposal``: the masked LM's conditional at the slot (one batched forward for all contexts), special tokens
  excluded, optionally restricted to the top-K (renormalised) and mixed with ``ε`` · uniform for full support.
* ``CausalLMProposal`` (Su / CGMH): top-K next tokens of a causal LM given the prefix, each candidate sentence
  re-scored by its whole-sentence probability and normalised over the K candidates, through the LM's engine of rows
  after a prompt (:mod:`textdiff.mcmc.prompted`): the prefix runs once, and on CPU each candidate pays only for its
  own token and the rest of the sentence after it (docs/mcmc.md#a-tree-of-scored-tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from textdiff.mcmc.positions import logits_at
from textdiff.mcmc.prompted import Prompt, prompted_engine, row_log_probs
from textdiff.padding import bucket, by_width, pad
from textdiff.registry import Registry
from textdiff.support import TokenSupport

Context = tuple[tuple[int, ...], int]

#: proposal classes by name (``textdiff generate --proposal``); each builds itself with
#: ``from_models(models, top_k=..., lm_top_k=..., epsilon=..., suffix=...)`` (docs/extending.md#a-new-proposal)
PROPOSALS = Registry("proposal")
register_proposal = PROPOSALS.register


@dataclass(frozen=True)
class ProposalModels:
    """The models a proposal may draw on: the scoring causal LM (with its prompt ids) and an optional masked LM."""

    lm: Any
    lm_tokenizer: Any
    mlm: Any = None
    mlm_tokenizer: Any = None
    prefix_ids: Sequence[int] | None = None


def context_tensors(contexts: Sequence[Context], device: torch.device | str = "cpu"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids [N, W], lengths [N], slots [N])`` of tuple contexts, right-padded with 0."""
    ids, _ = pad([tokens for tokens, _ in contexts], 0, width=max([1] + [len(t) for t, _ in contexts]), device=device)
    lengths = torch.tensor([len(tokens) for tokens, _ in contexts], dtype=torch.long, device=device)
    slots = torch.tensor([slot for _, slot in contexts], dtype=torch.long, device=device)
    return ids, lengths, slots


def context_log_probs(proposal, ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` float64 log ``g`` on ``ids``' device of the contexts ``ids[n, :lengths[n]]`` with the placeholder
    at ``slots[n]``: ``proposal.log_probs_at`` when it has one, else ``proposal.log_probs`` on the rows as tuples (a
    host sync)."""
    at = getattr(proposal, "log_probs_at", None)
    if at is not None:
        return at(ids, lengths, slots)
    contexts = [(tuple(row[:n]), slot) for row, n, slot in zip(ids.tolist(), lengths.tolist(), slots.tolist())]
    return proposal.log_probs(contexts).to(ids.device, torch.float64)


def restrict(log_g: torch.Tensor, allowed: torch.Tensor, top_k: int | None, epsilon: float) -> torch.Tensor:
    """Renormalised ``log g`` on ``allowed`` ids, optionally top-K, mixed with ``ε`` · uniform(allowed)."""
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    log_g = log_g.double().masked_fill(~allowed, -math.inf)
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(log_g, min(top_k, log_g.shape[-1]), dim=-1).values[..., -1:]
        log_g = log_g.masked_fill(log_g < kth, -math.inf)
    log_g = torch.log_softmax(log_g, dim=-1)
    if epsilon > 0:
        log_uniform = torch.where(allowed, -allowed.sum().double().log(), -math.inf)
        log_g = torch.logaddexp(log_g + math.log1p(-epsilon), log_uniform + math.log(epsilon))
    return log_g


@register_proposal("mlm")
class MLMProposal:
    """``g(· | context)`` = masked-LM conditional at the slot (the "full MLM conditional" option of
    docs/mcmc.md#token-proposals).

    The MLM sees ``[CLS] context suffix_ids [SEP]`` (``suffix_ids``: fixed text after the state, e.g. the final ".").
    A row's numbers never depend on its batchmates: on CPU rows run in groups padded to their own width
    (``by_width``, a host read of the lengths), on CUDA all at one fixed width (static shapes, no host sync).
    """

    def __init__(self, model, tokenizer, top_k: int | None = None, epsilon: float = 0.0,
                 excluded: Sequence[int] | None = None, suffix_ids: Sequence[int] = ()):
        self.model, self.tokenizer, self.suffix_ids = model, tokenizer, list(suffix_ids)
        self.top_k, self.epsilon = top_k, epsilon
        self.placeholder = tokenizer.mask_token_id
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.vocab_size
        self.support = TokenSupport.from_tokenizer(tokenizer, self.vocab_size)
        self.allowed = _allowed(self.support, excluded).to(self.device)
        restrict(torch.zeros(1, self.vocab_size, device=self.device), self.allowed, top_k, epsilon)  # validates them
        ends = [*self.suffix_ids, tokenizer.sep_token_id]
        self.ends = torch.tensor(ends, dtype=torch.long, device=self.device)  # [S + 1]: after every context
        self.forwards = 0

    #: states are the proposal tokenizer's ids, not the scorer's (the target re-tokenises the text)
    in_scorer_space = False
    needs_mlm = True

    @classmethod
    def from_models(cls, models: ProposalModels, *, top_k: int | None = 20, epsilon: float = 0.0,
                    suffix: str = "", **_) -> MLMProposal:
        if models.mlm is None:
            raise ValueError("proposal 'mlm' needs a masked LM (mlm=...)")
        suffix_ids = models.mlm_tokenizer.encode(suffix, add_special_tokens=False) if suffix else []
        return cls(models.mlm, models.mlm_tokenizer, top_k=top_k, epsilon=epsilon, suffix_ids=suffix_ids)

    def keyword_ids(self, word: str) -> list[int]:
        """The word's pieces in this proposal's vocabulary (``[]`` if it needs ``[UNK]``)."""
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        return [] if self.tokenizer.unk_token_id in ids else ids

    def log_probs(self, contexts: Sequence[Context]) -> torch.Tensor:
        """``[N, V]`` log ``g`` of tuple contexts (on the CPU)."""
        return self.log_probs_at(*context_tensors(contexts, self.device)).cpu()

    def model_rows(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([CLS] context suffix [SEP]`` ids ``[N, W']``, attention mask ``[N, W']``), padded to
        ``W' = bucket(W + 2 + S)``."""
        n, end = lengths[:, None], len(self.ends) - 1
        columns = torch.arange(bucket(ids.shape[1] + 2 + end), device=ids.device)[None]
        after = columns - 1 - n  # index into suffix + [SEP]
        rows = torch.where(after <= end, self.ends[after.clamp(0, end)], self.tokenizer.pad_token_id)
        rows = torch.where(columns <= n, ids.gather(1, (columns - 1).clamp(0, ids.shape[1] - 1).expand_as(after)),
                           rows)
        rows = torch.where(columns == 0, self.tokenizer.cls_token_id, rows)
        return rows, (columns < n + 2 + end).long()

    @torch.no_grad()
    def log_probs_at(self, ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``[N, V]`` float64 log ``g`` on the device for the contexts ``ids[n, :lengths[n]]`` ``[N, W]`` with the
        placeholder at ``slots[n]``."""
        ids, lengths, slots = ids.to(self.device), lengths.to(self.device), slots.to(self.device)
        rows, mask = self.model_rows(ids, lengths)
        if self.device.type == "cuda":
            at_slot = logits_at(self.model, rows, mask, slots + 1)
            self.forwards += 1
        else:
            at_slot = torch.empty(len(rows), self.vocab_size, dtype=torch.float64, device=self.device)
            for width, part in by_width(mask.sum(1).tolist()):
                part = torch.tensor(part, device=self.device)
                at_slot[part] = logits_at(self.model, rows[part, :width], mask[part, :width], slots[part] + 1).double()
                self.forwards += 1
        return restrict(torch.log_softmax(at_slot.double(), -1), self.allowed, self.top_k, self.epsilon)


@register_proposal("lm")
class CausalLMProposal:
    """Su's / CGMH's proposal: prefix top-K, whole-sentence re-scoring (docs/mcmc.md#faithful-reference-modes).

    Contexts are in the causal LM's own token space. ``g(w | context) ∝ p_LM(prefix + w + suffix + EOS)`` for ``w``
    in the top-K next tokens after the prefix (``-inf`` elsewhere), mixed with ``ε`` · uniform when ``epsilon > 0``;
    ``prefix_ids`` is the prompt every sentence follows, ``suffix_ids`` fixed text after the state (scored with every
    candidate). The candidates of a context are rows after the prompt sharing the prefix, scored by the model's engine
    (:func:`~textdiff.mcmc.prompted.prompted_engine`) in chunks of at most ``max_batch_tokens`` row tokens.
    """

    def __init__(self, model, tokenizer, top_k: int = 64, epsilon: float = 0.0,
                 prefix_ids: Sequence[int] | None = None, excluded: Sequence[int] | None = None,
                 suffix_ids: Sequence[int] = (), max_batch_tokens: int = 4096):
        self.model, self.tokenizer, self.top_k, self.epsilon = model, tokenizer, top_k, epsilon
        self.suffix_ids = list(suffix_ids)
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.prefix_ids = list(prefix_ids) if prefix_ids is not None else [bos]
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.placeholder = self.pad_id
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.vocab_size
        self.support = TokenSupport.from_tokenizer(tokenizer, self.vocab_size)
        self.allowed = _allowed(self.support, excluded)
        restrict(torch.zeros(1, self.vocab_size), self.allowed, top_k, epsilon)
        self.max_batch_tokens = max_batch_tokens
        self.engine = prompted_engine(model)
        self._prompt: Prompt | None = None

    #: states are the scoring LM's own ids
    in_scorer_space = True
    needs_mlm = False

    @classmethod
    def from_models(cls, models: ProposalModels, *, lm_top_k: int = 64, epsilon: float = 0.0, suffix: str = "",
                    **_) -> CausalLMProposal:
        return cls(models.lm, models.lm_tokenizer, top_k=lm_top_k, epsilon=epsilon, prefix_ids=models.prefix_ids,
                   suffix_ids=models.lm_tokenizer.encode(suffix, add_special_tokens=False))

    def keyword_ids(self, word: str) -> list[int]:
        """The word's tokens after a space (``[]`` unless they decode back to the word)."""
        ids = self.tokenizer.encode(" " + word, add_special_tokens=False)
        return ids if self.tokenizer.decode(ids).strip() == word else []

    @torch.no_grad()
    def log_probs(self, contexts: Sequence[Context]) -> torch.Tensor:
        """``[N, V]``: the top-K candidates after each context's prefix, normalised over their whole sentences (a
        row's numbers never depend on its batchmates)."""
        if self._prompt is None:
            self._prompt = self.engine.prompt(self.prefix_ids)
        heads = [list(tokens[:slot]) for tokens, slot in contexts]
        tails = [list(tokens[slot + 1:]) + self.suffix_ids + [self.eos_id] for tokens, slot in contexts]
        next_lp = self.engine.next_log_probs(heads, [self._prompt] * len(heads)).masked_fill(~self.allowed, -math.inf)
        cand_lp, cand = torch.topk(next_lp, self.top_k, dim=-1)  # [n, k]
        rows = [head + [w] + tail for head, tail, words in zip(heads, tails, cand.tolist()) for w in words]
        skip = [len(head) + 1 for head in heads for _ in range(self.top_k)]  # the prefix and the candidate
        tail_lp = row_log_probs(self.engine, rows, [self._prompt] * len(rows), self.max_batch_tokens, skip)
        scores = cand_lp + tail_lp.view(len(contexts), self.top_k)
        log_g = torch.full((len(contexts), self.vocab_size), -math.inf, dtype=torch.float64)
        log_g.scatter_(1, cand, torch.log_softmax(scores, -1))
        if self.epsilon > 0:
            return restrict(log_g, self.allowed, None, self.epsilon)
        return log_g


def _allowed(support: TokenSupport, excluded: Sequence[int] | None) -> torch.Tensor:
    """``[V]`` bool: the support's drawable tokens, or everything but ``excluded`` when given."""
    if excluded is None:
        return support.allowed()
    allowed = torch.ones(support.vocab_size, dtype=torch.bool)
    allowed[list(excluded)] = False
    return allowed
