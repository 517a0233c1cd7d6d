"""Batched MLM Gibbs sampling ("BERT has a Mouth", as in Su's blog post; docs/mcmc.md#mlm-gibbs-sampling).

Each step, every chain picks one resamplable position (uniformly at random, or the next one of a sweep), masks
it, and redraws it from the model's conditional at that position; all chains share one forward pass. Chains may
have different lengths (right padding + attention mask). The model is any HF masked LM or any callable
``(input_ids=..., attention_mask=...) -> obj with .logits [B, L, V]``; an exact conditional oracle plugs in the same
way in tests.

Design decisions (docs/numerics.md#d7): special tokens (and any ``excluded`` ids) are never proposed; temperature and
top-k exist but are off by default (they change the law); a chain started from ``[MASK]``s first fills its masks, in
random order, one per step, and states still holding a ``[MASK]`` are never returned as samples. Plain MLM-Gibbs has
no known stationary law for real MLMs (docs/mcmc.md#exactness-caveat-and-the-mh-corrected-variant); with exact
conditionals it samples the joint. The MH-corrected variant (``energy=``, e.g.
``pseudo_log_likelihood_energy``; Goyal et al. 2022) targets ``exp(−E)/Z`` with the masked conditional as proposal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from textdiff import checks, rng
from textdiff.mcmc.positions import logits_at
from textdiff.padding import pad
from textdiff.support import TokenSupport

ORDERS = ("random", "sweep")


@dataclass
class GibbsResult:
    """Samples per chain (token ids with special tokens, padding removed) and per-step diagnostics ``[steps, B]``."""

    samples: list[list[list[int]]]
    chosen_log_probs: torch.Tensor
    changed: torch.Tensor
    lengths: list[int]

    def changes_per_sweep(self) -> list[list[int]]:
        """Number of tokens changed in each consecutive block of ``length`` steps, per chain."""
        out = []
        for c, n in enumerate(self.lengths):
            col = self.changed[:, c].long()
            out.append([int(col[s: s + n].sum()) for s in range(0, len(col) - n + 1, max(n, 1))])
        return out


def masked_init(tokenizer, lengths: Sequence[int]) -> list[list[int]]:
    """``[CLS] + [MASK]^l + [SEP]`` for each length (the bert-gen initialisation, also Su's)."""
    return [[tokenizer.cls_token_id, *([tokenizer.mask_token_id] * n), tokenizer.sep_token_id] for n in lengths]


def random_lengths(n: int, low: int, high: int, generator: torch.Generator) -> list[int]:
    """``n`` lengths uniform on ``low..high`` inclusive (Su: 8..32)."""
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= low <= high, got low={low}, high={high}")
    return (low + torch.floor(rng.uniform((n,), generator) * (high - low + 1)).long()).tolist()


def text_init(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids (with the tokenizer's special tokens) of seed sentences."""
    return [tokenizer(text)["input_ids"] for text in texts]


@torch.no_grad()
def gibbs_sample(
    model,
    init_ids: Sequence[Sequence[int]],
    support: TokenSupport,
    *,
    steps: int,
    burn_in: int = 0,
    thin: int = 1,
    order: str = "random",
    temperature: float = 1.0,
    top_k: int | None = None,
    protected: Sequence[Sequence[bool]] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    energy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> GibbsResult:
    """Run batched Gibbs chains from ``init_ids`` (docs/mcmc.md#gibbs-procedure, docs/mcmc.md#gibbs-batching).

    Resamplable positions: not a special token of the initial sequence (except ``[MASK]``) and not ``protected``.
    After ``burn_in`` steps every ``thin``-th state without ``[MASK]`` is a sample. With ``energy`` (``(ids,
    attention_mask) -> E [B]``) each redraw of a complete state is an MH proposal accepted with
    ``min(1, exp(E(x) − E(y)) q(x_i | x_−i) / q(y_i | x_−i))`` (Goyal et al.'s MH correction, see the module docs),
    so the chains target ``exp(−E)/Z``.
    ``support`` says which tokens are special (kept where they stand), never drawn (``excluded_ids``), and never drawn
    at a chain's first non-special position (``continuation_ids``: e.g. WordPiece ``##`` pieces, which cannot open a
    sentence); its ``mask_id`` and ``pad_id`` are used. The restrictions are support restrictions: every conditional is
    renormalised over the allowed tokens, so the chains target the law restricted to sequences without them (exactly,
    from a start inside that support).
    """
    checks.positive_int("steps", steps)
    checks.positive_int("burn_in", burn_in, minimum=0)
    checks.positive_int("thin", thin)
    if burn_in >= steps:
        raise ValueError(f"burn_in must be < steps so that samples are kept, got burn_in={burn_in}, steps={steps}")
    checks.one_of("order", order, ORDERS)
    checks.positive_float("temperature", temperature)
    if not init_ids:
        raise ValueError("init_ids must hold at least one chain")
    if support.mask_id is None or support.pad_id is None:
        raise ValueError("support needs a mask_id and a pad_id for Gibbs sampling")
    mask_id = support.mask_id
    device = checks.device(device)
    generator = rng.make_generator(seed, generator, device)
    ids, attention = pad(init_ids, support.pad_id, device=device)
    attention = attention.long()
    n_chains = ids.shape[0]
    kept = torch.tensor(sorted(set(support.special_ids) - {mask_id}), dtype=torch.long, device=device)
    special = torch.isin(ids, kept) | (attention == 0)
    opening = (~special).int().argmax(-1)  # first non-special position of every chain
    fixed = special.clone()
    if protected is not None:
        prot, _ = pad([[bool(v) for v in row] for row in protected], 0, device=device)
        fixed[:, : prot.shape[1]] |= prot.bool()
    free = ~fixed
    counts = free.sum(-1)
    if (counts == 0).any():
        raise ValueError("every chain needs at least one resamplable position")
    rows = torch.arange(n_chains, device=device)
    chosen_lp = torch.empty(steps, n_chains, dtype=torch.float64, device=device)  # moved to the CPU once, at the end
    changed = torch.zeros(steps, n_chains, dtype=torch.bool, device=device)
    samples: list[list[list[int]]] = [[] for _ in range(n_chains)]
    sweep_order = torch.sort(torch.where(free, torch.arange(ids.shape[1], device=device), ids.shape[1]), -1).values
    current_energy = torch.full((n_chains,), float("nan"), dtype=torch.float64)
    for step in tqdm(range(steps), disable=not progress, desc="Gibbs steps", leave=False):
        still_masked = (ids == mask_id) & free
        pool = torch.where(still_masked.any(-1, keepdim=True), still_masked, free)
        if order == "sweep":
            positions = sweep_order[rows, step % counts]  # the free positions of each chain in turn
            positions = torch.where(still_masked.any(-1), _uniform_choice(pool, generator), positions)
        else:
            positions = _uniform_choice(pool, generator)
        previous = ids[rows, positions].clone()
        ids[rows, positions] = mask_id
        logits = logits_at(model, ids, attention, positions).double()
        logits = support.restrict(logits, opening=positions == opening)
        draws = rng.sample_categorical(logits, generator, temperature=temperature, top_k=top_k, check=False)
        if energy is not None:
            draws = _mh_correct(energy, ids, attention, positions, previous, draws, current_energy,
                                rng.filter_logits(logits / temperature, top_k), mask_id, generator)
        ids[rows, positions] = draws
        chosen_lp[step] = torch.log_softmax(logits, -1)[rows, draws]
        changed[step] = draws != previous
        if step >= burn_in and (step - burn_in) % thin == 0:
            complete = ~((ids == mask_id) & free).any(-1)
            for c in complete.nonzero()[:, 0].tolist():
                samples[c].append(ids[c][attention[c] == 1].tolist())
    return GibbsResult(samples, chosen_lp.cpu(), changed.cpu(), counts.tolist())


def _mh_correct(energy, ids, attention, positions, previous, draws, current_energy, proposal_logits, mask_id,
                generator) -> torch.Tensor:
    """Goyal et al.'s MH test of the redraws (docs/mcmc.md#exactness-caveat-and-the-mh-corrected-variant); a mask being
    filled is always accepted."""
    rows = torch.arange(ids.shape[0], device=ids.device)
    complete = (previous != mask_id) & ~((ids == mask_id).sum(-1) > 1)
    if not complete.any():
        return draws
    before = ids.clone()
    before[rows, positions] = previous
    unknown = complete.cpu() & torch.isnan(current_energy)
    if unknown.any():
        current_energy[unknown] = energy(before[unknown.to(ids.device)], attention[unknown.to(ids.device)]).cpu()
    after = before.clone()
    after[rows, positions] = draws
    proposed_energy = energy(after[complete], attention[complete]).double().cpu()
    log_q = torch.log_softmax(proposal_logits[complete], -1)
    sub = torch.arange(int(complete.sum()), device=log_q.device)
    log_ratio = (current_energy[complete.cpu()] - proposed_energy
                 + (log_q[sub, previous[complete]] - log_q[sub, draws[complete]]).cpu())
    accept = rng.log_uniform(log_ratio.shape, generator).cpu() < log_ratio.clamp(max=0.0)
    out = draws.clone()
    idx = complete.nonzero()[:, 0]
    out[idx[~accept.to(ids.device)]] = previous[idx[~accept.to(ids.device)]]
    energies = current_energy[complete.cpu()]
    energies[accept] = proposed_energy[accept]
    current_energy[complete.cpu()] = energies
    return out


def pseudo_log_likelihood_energy(model, support: TokenSupport, raw: bool = False):
    """``E(x)`` of Goyal et al. (the MH-corrected variant): minus the sum over body positions of the masked log-prob of
    ``x_j`` (``raw=True``: of the unnormalised logit), special tokens excluded. One batched forward of ``B × l``
    copies."""
    special, mask_id = torch.tensor(support.special_ids, dtype=torch.long), support.mask_id

    @torch.no_grad()
    def energy(ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        body = (attention == 1) & ~torch.isin(ids, special.to(ids.device))
        chain, position = body.nonzero(as_tuple=True)
        copies = ids[chain].clone()
        copies[torch.arange(len(chain)), position] = mask_id
        logits = model(input_ids=copies, attention_mask=attention[chain]).logits[torch.arange(len(chain)), position]
        logits = logits.double()
        logits[:, special] = float("-inf")  # the sampler never proposes special tokens: normalise without them
        scores = logits if raw else torch.log_softmax(logits, -1)
        picked = scores[torch.arange(len(chain)), ids[chain, position]]
        return -torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device).index_add(0, chain, picked)

    return energy


def _uniform_choice(pool: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One position per row, uniform over the ``True`` entries of ``pool [B, L]`` (float64 Gumbel-max)."""
    logits = torch.zeros(pool.shape, dtype=torch.float64, device=pool.device).masked_fill(~pool, float("-inf"))
    return rng.sample_categorical(logits, generator, check=False)  # every pool holds a position: no host sync
