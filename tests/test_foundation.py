"""The package skeleton: CLI, shared randomness (float64 categorical draws, seeding, worker streams)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from scipy import stats

from textdiff import rng
from textdiff.cli import build_parser


def test_cli_help_lists_every_verb_without_importing_torch():
    """``textdiff --help`` reads the verbs' lines from their sources: it lists every verb, with the help line its
    full parser has, and imports neither torch nor the verbs."""
    code = ("import sys; from textdiff.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('imported:', sorted(m for m in sys.modules if m == 'torch' or m.startswith('textdiff.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: textdiff" in out and out.strip().endswith("imported: []")
    full = build_parser()._subparsers._group_actions[0]
    assert len(full.choices) == 5
    words = " ".join(out.split())  # argparse wraps the lines
    for action in full._choices_actions:
        assert f"{action.dest} {action.help}" in words


def test_every_verbs_help_names_each_default_once_and_no_repository_path():
    """An option's help names its default once (its own words or argparse's suffix, never both, never ``None``), and
    never as a path of this repository, which an installed package does not have."""
    verbs = build_parser()._subparsers._group_actions[0].choices
    for name, parser in verbs.items():
        text = " ".join(parser.format_help().split())
        assert "(default: None)" not in text and "data/models" not in text, name
        for action in parser._actions:
            help_text = parser._get_formatter()._expand_help(action) if action.help else ""
            assert help_text.count("(default") <= 1, (name, action.dest, help_text)


def test_sample_categorical_matches_law():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    gen = rng.make_generator(seed=0)
    n = 100_000
    draws = rng.sample_categorical(probs.log().expand(n, 4), gen)
    counts = torch.bincount(draws, minlength=4).numpy()
    assert stats.chisquare(counts, (probs * n).numpy()).pvalue > 1e-4
    # a biased law (a different distribution) is rejected by the same test
    biased = torch.tensor([0.45, 0.35, 0.15, 0.05], dtype=torch.float64)
    assert stats.chisquare(counts, (biased * n).numpy()).pvalue < 1e-6


def test_sample_categorical_tail_is_not_truncated():
    # a token of probability 1e-6 must still be drawn about n * 1e-6 times (float32 Gumbel noise loses such tails)
    logits = torch.tensor([0.0, math.log(1e-6)], dtype=torch.float64)
    gen = rng.make_generator(seed=1)
    n = 4_000_000
    hits = int(rng.sample_categorical(logits.expand(n, 2), gen).sum())
    assert stats.poisson(n * 1e-6 / (1 + 1e-6)).cdf(hits) > 1e-4 and hits > 0


def test_seed_reproducible_and_distinct():
    a = rng.sample_categorical(torch.zeros(1000, 10), rng.make_generator(seed=5))
    b = rng.sample_categorical(torch.zeros(1000, 10), rng.make_generator(seed=5))
    c = rng.sample_categorical(torch.zeros(1000, 10), rng.make_generator(seed=6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_worker_seeds_distinct():
    seeds = {rng.worker_seed(1234, w) for w in range(64)}
    assert len(seeds) == 64


def test_top_k_top_p_restrict_support():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    gen = rng.make_generator(seed=2)
    draws = rng.sample_categorical(logits.expand(5000, 4), gen, top_k=2)
    assert set(draws.tolist()) == {0, 1}
    draws = rng.sample_categorical(logits.expand(5000, 4), gen, top_p=0.5)
    assert set(draws.tolist()) == {0}


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.95, 0.999, 1.0])
def test_nucleus_keeps_what_a_full_sort_keeps(top_p):
    """The nucleus ranks only the top entries (growing ``k``); it keeps exactly the entries a full sort keeps, on
    peaked rows (nucleus inside the first 64), flat rows (``k`` must grow to ``V``) and rows with impossible
    entries."""
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([8.0, 3.0, 1.0, 0.01])[:, None]
    logits = (torch.randn(4, 3000, generator=g, dtype=torch.float64) * scale).repeat(2, 1)
    logits[4:, ::3] = -math.inf
    ordered, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(ordered, dim=-1)
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, torch.cumsum(probs, -1) - probs >= top_p)
    assert torch.equal(rng.filter_logits(logits, top_p=top_p), logits.masked_fill(drop, -math.inf))


@pytest.mark.parametrize("top_p", [0.5, 0.9])
@pytest.mark.parametrize("logits", [[2.0, 1.5, 1.0, 0.2, -0.5, -3.0, -math.inf], [0.0] * 300],
                         ids=["peaked", "flat"])
def test_sample_nucleus_draws_the_filtered_law(logits, top_p):
    """Inverse CDF over the ranked nucleus (one uniform per row) draws the law of Gumbel-max over ``filter_logits``:
    nothing outside the nucleus, chi-square against the enumerated law, on a peaked row and on a flat one whose
    nucleus lies beyond the first ranked entries; the whole row's CDF (the nucleus forgotten) is rejected."""
    logits = torch.tensor(logits, dtype=torch.float64)
    n = 200_000
    u = rng.uniform((n,), rng.make_generator(seed=3))
    law = torch.softmax(rng.filter_logits(logits[None], top_p=top_p)[0], -1)
    support = law > 0

    def p_value(draws: torch.Tensor) -> float:
        counts = torch.bincount(draws, minlength=len(logits))
        if counts[~support].any():
            return 0.0
        return stats.chisquare(counts[support].numpy(), (law[support] * n).numpy()).pvalue

    assert p_value(rng.sample_nucleus(logits.expand(n, -1), u, top_p)) > 1e-4
    assert p_value(rng.sample_nucleus(logits.expand(n, -1), u, 1.0)) < 1e-6


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}])
def test_bad_sampling_parameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        rng.sample_categorical(torch.zeros(2, 3), rng.make_generator(seed=0), **kwargs)


def test_bad_nucleus_mass():
    with pytest.raises(ValueError, match="top_p"):
        rng.sample_nucleus(torch.zeros(2, 3), torch.full((2,), 0.5, dtype=torch.float64), 0.0)


def test_all_inf_row_rejected():
    with pytest.raises(ValueError, match="-inf"):
        rng.sample_categorical(torch.full((1, 3), -math.inf), rng.make_generator(seed=0))


def test_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        rng.make_generator(seed=-1)
    with pytest.raises(TypeError, match="seed"):
        rng.make_generator(seed="1")
