"""Enumerable toy distributions and exact-posterior predictors for the UDM tests
(docs/udm.md#exactness-properties-and-tests)."""

from __future__ import annotations

import itertools

import torch
from scipy import stats

from textdiff.udm import Batch, ForwardProcess


def all_sequences(vocab: int, length: int) -> torch.Tensor:
    """Every sequence of ``V^l`` as a ``[V^l, l]`` tensor (lexicographic order = base-``V`` index)."""
    return torch.tensor(list(itertools.product(range(vocab), repeat=length)), dtype=torch.long)


def random_pdata(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, generator=g, dtype=torch.float64) + 0.05
    return p / p.sum()


def index_of(ids: torch.Tensor, base: int) -> torch.Tensor:
    """Base-``base`` index of each row (inverse of :func:`all_sequences`)."""
    weights = base ** torch.arange(ids.shape[-1] - 1, -1, -1)
    return (ids * weights).sum(-1)


class ExactPosterior:
    """The exact posterior marginals ``P_i(w) = p(x0_i = w | x_t)`` by enumeration, behind the predictor interface
    (``(x_t: Batch, t) -> logits [B, L, V_out]``). Computed once per distinct ``(x_t, t)`` pair."""

    def __init__(self, process: ForwardProcess, xs: torch.Tensor, p: torch.Tensor, out_vocab: int):
        self.process, self.xs, self.logp, self.out_vocab = process, xs, p.log(), out_vocab
        self.vocab = int(xs.max()) + 1
        self.onehot = torch.nn.functional.one_hot(xs, self.vocab).double()  # [N, L, V]

    def posterior(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``p(x0 | x_t)`` over all ``N`` sequences, ``[U, N]`` for ``U`` distinct states."""
        n = len(self.xs)
        x0 = Batch(self.xs.repeat(len(x_t), 1))
        xt = Batch(x_t.repeat_interleave(n, 0))
        lp = self.process.log_prob(x0, xt, t.repeat_interleave(n)).view(len(x_t), n) + self.logp[None]
        return torch.softmax(lp, -1)

    def __call__(self, x: Batch, t: torch.Tensor) -> torch.Tensor:
        key = torch.cat([x.ids.double(), t[:, None]], 1)
        uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
        w = self.posterior(uniq[:, :-1].long(), uniq[:, -1])
        marg = torch.einsum("un,nlv->ulv", w, self.onehot)
        logits = torch.full((len(uniq), x.ids.shape[1], self.out_vocab), -torch.inf, dtype=torch.float64)
        logits[..., : self.vocab] = marg.log()
        return logits[inverse]


class PositionalPosterior(ExactPosterior):
    """The same exact posterior, also offering its logits at chosen positions only (``logits_at``): the loop then
    takes its sparse path (docs/udm.md#logits-only-where-drawn)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.positions = 0

    def logits_at(self, x: Batch, t: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        self.positions += int(where.sum())
        return self(x, t)[where]


def chi_square_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value of sample indices against ``probs`` (all cells with positive probability)."""
    counts = torch.bincount(samples, minlength=len(probs)).double()
    support = probs > 0
    assert counts[~support].sum() == 0, "samples outside the support"
    expected = probs[support] * counts.sum()
    return float(stats.chisquare(counts[support].numpy(), expected.numpy()).pvalue)


def exact_state_law(process: ForwardProcess, x0: torch.Tensor, states: torch.Tensor, t: float) -> torch.Tensor:
    """``p(x_t = state | x0)`` for every row of ``states`` (exact, from ``process.log_prob``)."""
    n = len(states)
    tt = torch.full((n,), t, dtype=torch.float64)
    return process.log_prob(Batch(x0.expand(n, -1).clone()), Batch(states), tt).exp()


def product_pdata(vocab: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A product distribution ``p(x) = Π_i f_i(x_i)``: ``(f [L, V], p over all_sequences(vocab, length))``."""
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(length, vocab, generator=g, dtype=torch.float64) + 0.1
    f = f / f.sum(-1, keepdim=True)
    return f, f[torch.arange(length), all_sequences(vocab, length)].prod(-1)


def forward_state(process: ForwardProcess, xs: torch.Tensor, p: torch.Tensor, n: int, t: float,
                  g: torch.Generator) -> Batch:
    """``n`` draws of ``x_t`` from the exact forward marginal ``p_t`` (x0 ~ p over ``xs``, then the real forward code;
    at ``t = 1`` this is the exact prior used by the exactness tests, docs/numerics.md#d3)."""
    x0 = Batch(xs[torch.multinomial(p, n, replacement=True, generator=g)])
    return process.corrupt(x0, torch.full((n,), t, dtype=torch.float64), process.sample_noise(x0, g))
