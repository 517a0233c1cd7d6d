"""Exact-oracle tests of Viterbi sampling (docs/tokenization.md): enumerate every segmentation, draw 1e5 samples,
compare with the exact law; the legacy (pairwise duels with the kept path) and intermediate (sampled-prefix weights)
streaming samplers are negative controls that must fail the same test, while the exact streaming sampler (reservoir
form) passes it. The inverse-CDF predecessor draws of the batched backtrack are tested on their own too, in both loop
forms, against a biased predecessor law (edge weights without ``Z(s)``) that must fail."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

from textdiff.tokenization import UnigramTokenizer, lattice, viterbi
from textdiff.tokenization.normalization import Chunks

N_DRAWS = 100_000
ABABAB_COUNTS = {"a": 4, "b": 4, "ab": 3, "ba": 2, "aba": 1, "bab": 1, "abab": 1}
WATCHING = ["w", "wat", "watch", "atching", "ching", "ing"]


def ababab() -> UnigramTokenizer:
    return UnigramTokenizer.from_counts(ABABAB_COUNTS)


def watching() -> UnigramTokenizer:
    return UnigramTokenizer.from_pieces(WATCHING, [math.log(1 / 6)] * 6)


def segmentations(text: str, pieces: dict[str, float]) -> dict[tuple[str, ...], float]:
    """Every segmentation of ``text`` into ``pieces`` (DFS) with its total score."""
    if not text:
        return {(): 0.0}
    out = {}
    for end in range(1, len(text) + 1):
        head = text[:end]
        if head in pieces:
            for rest, score in segmentations(text[end:], pieces).items():
                out[(head,) + rest] = pieces[head] + score
    return out


def exact_law(text: str, tok: UnigramTokenizer, alpha: float) -> dict[tuple[str, ...], float]:
    pieces = {p: s for p, s in zip(tok.vocab.pieces, tok.vocab.scores)}
    scored = segmentations(text, pieces)
    log_z = torch.logsumexp(torch.tensor([alpha * s for s in scored.values()], dtype=torch.float64), 0).item()
    return {seg: math.exp(alpha * s - log_z) for seg, s in scored.items()}


def law_test(counts: Counter, law: dict) -> tuple[float, float]:
    """(chi-square p-value with cells of expected count < 5 pooled, max |empirical - exact| in units of sigma)."""
    n = sum(counts.values())
    assert set(counts) <= set(law), f"impossible segmentations drawn: {set(counts) - set(law)}"
    cells = sorted(law, key=law.get, reverse=True)
    expected = np.array([law[c] * n for c in cells])
    observed = np.array([counts.get(c, 0) for c in cells], dtype=float)
    small = expected < 5
    if small.any():
        expected = np.append(expected[~small], expected[small].sum())
        observed = np.append(observed[~small], observed[small].sum())
    p_value = stats.chisquare(observed, expected).pvalue if len(expected) > 1 else 1.0
    p = np.array([law[c] for c in cells])
    sigma = np.sqrt(p * (1 - p) / n)
    deviation = np.abs(np.array([counts.get(c, 0) for c in cells]) / n - p)
    return p_value, float(np.max(deviation / np.where(sigma > 0, sigma, np.inf)))


def draw(tok: UnigramTokenizer, text: str, alpha: float, device: str, seed: int, mixed: bool = False) -> Counter:
    """N_DRAWS samples of ``text`` in one batch; ``mixed`` interleaves a longer string (another length bucket)."""
    batch = [text, text + text[:3]] * (N_DRAWS // 2) if mixed else [text] * N_DRAWS
    rows = tok.encode(batch, alpha=alpha, seed=seed, device=device)[:: 2 if mixed else 1]
    return Counter({tuple(map(tok.id_to_piece, ids)): n for ids, n in Counter(map(tuple, rows)).items()})


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("case", ["ababab", "watching"])
def test_samples_follow_exact_law(case, alpha, device):
    tok = ababab() if case == "ababab" else watching()
    law = exact_law(case, tok, alpha)
    assert len(law) == (28 if case == "ababab" else 3)
    p_value, worst = law_test(draw(tok, case, alpha, device, seed=11), law)
    assert p_value > 1e-3 and worst < 4.5, (p_value, worst)


def test_law_does_not_depend_on_the_rest_of_the_batch(device):
    tok = ababab()
    p_value, worst = law_test(draw(tok, "ababab", 0.5, device, seed=12, mixed=True), exact_law("ababab", tok, 0.5))
    assert p_value > 1e-3 and worst < 4.5, (p_value, worst)


@pytest.mark.parametrize("case", ["ababab", "watching"])
def test_fixed_shape_loops_follow_exact_law(case, fixed_shapes):
    """The CUDA code path (no host reads inside the trie walk and the backtrack), run on the CPU."""
    tok = ababab() if case == "ababab" else watching()
    p_value, worst = law_test(draw(tok, case, 0.3, "cpu", seed=13, mixed=True), exact_law(case, tok, 0.3))
    assert p_value > 1e-3 and worst < 4.5, (p_value, worst)


def test_alpha_zero_is_uniform():
    law = exact_law("ababab", ababab(), 0.0)
    assert all(abs(p - 1 / 28) < 1e-12 for p in law.values())


def test_large_alpha_gives_the_viterbi_paths(device):
    tok = ababab()
    law = exact_law("ababab", tok, 40.0)
    optima = {seg for seg, p in law.items() if p > 1e-6}  # ab|abab and abab|ab tie exactly
    assert optima == {("ab", "abab"), ("abab", "ab")} and sum(law[s] for s in optima) > 1 - 1e-9
    assert tuple(tok.tokenize("ababab", device=device)) == ("ab", "abab")  # tie rule: longest last piece
    unique = exact_law("ababa", tok, 1.0)
    assert tuple(tok.tokenize("ababa", device=device)) == max(unique, key=unique.get)
    drawn = Counter(map(tuple, tok.tokenize(["ababab"] * 4000, alpha=40.0, seed=0, device=device)))
    assert set(drawn) == optima and abs(drawn[("ab", "abab")] / 4000 - 0.5) < 0.04


def test_log_partition_entropy_and_expected_length_match_enumeration(device):
    tok = ababab()
    for alpha in (0.0, 0.3, 1.0):
        law = exact_law("ababab", tok, alpha)
        pieces = dict(zip(tok.vocab.pieces, tok.vocab.scores))
        scored = segmentations("ababab", pieces)
        log_z = math.log(math.fsum(math.exp(alpha * s) for s in scored.values()))
        entropy = -math.fsum(p * math.log(p) for p in law.values())
        length = math.fsum(p * len(seg) for seg, p in law.items())
        out = tok.segmentation_stats(["ababab", "", "b"], alpha, device=device)
        assert out["log_z"][0].item() == pytest.approx(log_z, abs=1e-9)
        assert out["entropy"][0].item() == pytest.approx(entropy, abs=1e-9)
        assert out["expected_tokens"][0].item() == pytest.approx(length, abs=1e-9)
        assert out["expected_tokens"][1:].tolist() == [0.0, 1.0]


# --- the predecessor draws of the batched backtrack on their own -----------------------------------------------------


def backtrack_draws(text: str, tok: UnigramTokenizer, alpha: float, compact: bool, biased: bool = False) -> Counter:
    """N_DRAWS paths through the lattice of ``text`` (one segment) from ``viterbi.backtrack``, with the predecessor
    law of the forward pass or, ``biased=True``, the edge weights ``e^{alpha v}`` normalised per position without the
    prefix mass ``Z(s)`` (a plausible shortcut that is not the exact predecessor law)."""
    zero = torch.zeros(1, dtype=torch.int64)
    stream = lattice.chunk_stream(Chunks([text], zero, zero), 1, torch.device("cpu"))
    trie = tok._trie("cpu")
    cands = lattice.find_candidates(stream.units, trie, tok.vocab.unk_id, compact)
    (table,) = lattice.edge_tables(cands, lattice.find_segments(stream.units, cands), trie.max_len)
    weights = table.gather(alpha * tok.vocab.lattice_scores()[cands.piece].double())
    _, cdf = viterbi.forward(weights, with_cdf=True)
    if biased:
        mass = torch.cumsum(torch.exp(weights - weights.max(2, keepdim=True).values), 2)
        cdf = mass / mass[..., -1:]
    out = torch.full((N_DRAWS * len(text) + 1,), -1, dtype=torch.int64)
    paths = torch.zeros(N_DRAWS, dtype=torch.int64)
    base = torch.arange(N_DRAWS) * len(text)
    gen = torch.Generator().manual_seed(7)
    viterbi.backtrack(table.candidate, table.length, paths, base, out, cdf=cdf, generator=gen, compact=compact)
    chosen = out[:-1].view(N_DRAWS, len(text))  # candidate starting at each unit of each draw, -1 inside pieces
    ids = torch.where(chosen >= 0, cands.piece[chosen.clamp(min=0)], -1)
    counts = Counter(map(tuple, ids.tolist()))
    return Counter({tuple(tok.id_to_piece(i) for i in row if i >= 0): n for row, n in counts.items()})


@pytest.mark.parametrize("compact", [True, False])
def test_inverse_cdf_backtrack_follows_exact_law(compact):
    tok = ababab()
    law = exact_law("ababab", tok, 1.0)
    p_value, worst = law_test(backtrack_draws("ababab", tok, 1.0, compact), law)
    assert p_value > 1e-3 and worst < 4.5, (p_value, worst)
    p_value, worst = law_test(backtrack_draws("ababab", tok, 1.0, compact, biased=True), law)
    assert p_value < 1e-10 and worst > 10, (p_value, worst)


# --- negative controls: streaming samplers of BytePiece's history, vectorised over draws ----------------------------


def streaming_sample(text: str, tok: UnigramTokenizer, alpha: float, variant: str, n: int, seed: int) -> Counter:
    """Draw ``n`` segmentations with a streaming sampler: ``exact`` (reservoir), ``intermediate`` (sampled-prefix
    weights) or ``legacy`` (pairwise duels). Candidates arrive by end position, longer pieces first (BytePiece's
    order)."""
    rng = np.random.default_rng(seed)
    pieces = dict(zip(tok.vocab.pieces, tok.vocab.scores))
    length = len(text)
    cands = sorted(
        ((s, e, pieces[text[s:e]]) for e in range(1, length + 1) for s in range(e) if text[s:e] in pieces),
        key=lambda c: (c[1], c[0]),
    )
    path = np.full((length + 1, n), -np.inf)  # score of the sampled path (legacy, intermediate)
    log_z = np.full((length + 1, n), -np.inf)  # accumulated mass (exact: prefix log-partition)
    path[0] = log_z[0] = 0.0
    back = np.zeros((length + 1, n), dtype=int)
    seen = np.zeros(length + 1, dtype=bool)
    for s, e, v in cands:
        if variant == "legacy":
            new = path[s] + v
            accept = np.ones(n, bool) if not seen[e] else rng.random(n) < 1 / (1 + np.exp(-alpha * (new - path[e])))
            path[e] = np.where(accept, new, path[e])
        else:
            # exact: prefix log-partition; intermediate: score of the sampled prefix path (its bug)
            weight = log_z[s] + alpha * v if variant == "exact" else alpha * (path[s] + v)
            log_z[e] = np.logaddexp(log_z[e], weight)
            accept = rng.random(n) < np.exp(weight - log_z[e])
            path[e] = np.where(accept, path[s] + v, path[e])
        back[e] = np.where(accept, s, back[e])
        seen[e] = True
    out = Counter()
    for i in range(n):
        end, seg = length, []
        while end > 0:
            seg.append(text[back[end, i] : end])
            end = back[end, i]
        out[tuple(reversed(seg))] += 1
    return out


def test_exact_streaming_sampler_passes_the_same_test():
    tok = ababab()
    law = exact_law("ababab", tok, 1.0)
    p_value, worst = law_test(streaming_sample("ababab", tok, 1.0, "exact", N_DRAWS, seed=3), law)
    assert p_value > 1e-3 and worst < 4.5


@pytest.mark.parametrize("variant", ["legacy", "intermediate"])
def test_biased_streaming_samplers_fail_on_ababab(variant):
    tok = ababab()
    law = exact_law("ababab", tok, 1.0)
    p_value, worst = law_test(streaming_sample("ababab", tok, 1.0, variant, N_DRAWS, seed=3), law)
    assert p_value < 1e-10 and worst > 10


def test_legacy_sampler_favours_the_last_arrival_on_watching():
    tok = watching()
    law = exact_law("watching", tok, 1.0)
    counts = streaming_sample("watching", tok, 1.0, "legacy", N_DRAWS, seed=5)
    p_value, _ = law_test(counts, law)
    assert p_value < 1e-10
    assert counts[("watch", "ing")] / N_DRAWS == pytest.approx(0.5, abs=0.01)
    assert counts[("w", "atching")] / N_DRAWS == pytest.approx(0.25, abs=0.01)
