"""Marginal identity Σ_{x_t} c(x_s | x_t, x0) p(x_t | x0) = p(x_s | x0) for every process and corrector
(docs/udm.md#p1-marginal-identity): x_t ~ p(·|x0) from the real forward code, x_s from the real corrector, law of x_s
against the exact p(x_s | x0) from the process's own log p(x_t | x0) (chi-square over all enumerated states)."""

from __future__ import annotations

import pytest
import torch
from udm_toys import all_sequences, chi_square_pvalue, exact_state_law, index_of

from textdiff.udm import Batch, LinearSchedule, MaskingProcess
from textdiff.udm.replacement import ReplaceAnyProcess, ReplaceDiffProcess

V, L, MASK, N = 3, 3, 3, 20000
X0 = torch.tensor([[0, 1, 1]])


class WrongPosteriorSchedule(LinearSchedule):
    """Negative control: the posterior noise uses the wrong threshold, so the corrector reverts with the wrong
    probability (as if t were t^(1/4))."""

    def posterior_noise(self, corrupted, corruptible, t, generator):
        return super().posterior_noise(corrupted, corruptible, t ** 0.25, generator)


def make(name, schedule, corrector):
    if name == "mask":
        return MaskingProcess(MASK, schedule, corrector)
    return {"replace_any": ReplaceAnyProcess, "replace_diff": ReplaceDiffProcess}[name](V, schedule, corrector)


def identity_pvalue(process, t: float, s: float, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    x0 = Batch(X0.expand(N, -1).clone())
    tt, ss = torch.full((N,), t, dtype=torch.float64), torch.full((N,), s, dtype=torch.float64)
    x_t = process.corrupt(x0, tt, process.sample_noise(x0, g))
    if process.corrector == "baseline":
        x_s = process.baseline_correct(x0, ss, g)
    else:
        x_s = process.correct(x_t, x0, tt, ss, g)
    base = MASK + 1 if isinstance(process, MaskingProcess) else V
    states = all_sequences(base, L)
    return chi_square_pvalue(index_of(x_s.ids, base), exact_state_law(process, X0, states, s))


GRIDS = {"count": [(1.0, 2 / 3), (1.0, 1 / 3), (2 / 3, 1 / 3)], "linear": [(0.9, 0.4), (0.5, 0.2)],
         "cosine": [(0.7, 0.3)]}
CASES = [(name, sched, corr, t, s) for name in ("mask", "replace_any", "replace_diff")
         for sched in ("count", "linear", "cosine") for corr in ("posterior", "baseline")
         for t, s in GRIDS[sched] if not (name != "mask" and sched == "cosine")]


@pytest.mark.parametrize("name,schedule,corrector,t,s", CASES)
def test_marginal_identity(name, schedule, corrector, t, s):
    assert identity_pvalue(make(name, schedule, corrector), t, s, seed=hash((name, schedule, t)) % 1000) > 1e-4


@pytest.mark.parametrize("name", ["mask", "replace_diff", "replace_any"])
def test_wrong_posterior_corrector_fails(name):
    """The same test detects a corrector that reverts with the wrong probability."""
    assert identity_pvalue(make(name, WrongPosteriorSchedule(), "posterior"), 0.9, 0.4, seed=3) < 1e-8


def test_masking_posterior_is_time_agnostic():
    """Masking tests (docs/udm.md#masking-tests): the enumerated posterior p(x0 | x_t) is the same at two different t
    for the same x_t."""
    proc = MaskingProcess(MASK, "linear")
    xs = all_sequences(V, L)
    p = torch.rand(len(xs), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x_t = Batch(torch.tensor([[MASK, 1, MASK]]).expand(len(xs), -1).clone())
    posts = []
    for t in (0.3, 0.8):
        lp = proc.log_prob(Batch(xs), x_t, torch.full((len(xs),), t, dtype=torch.float64)) + p.log()
        posts.append(torch.softmax(lp, 0))
    torch.testing.assert_close(posts[0], posts[1], rtol=0, atol=1e-15)
