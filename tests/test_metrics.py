"""Sample-quality metrics (docs/numerics.md#reporting-sample-quality)."""

import math

from textdiff.metrics import unigram_entropy


def test_unigram_entropy_values():
    assert unigram_entropy([]) == 0.0
    assert unigram_entropy([7, 7, 7]) == 0.0
    assert math.isclose(unigram_entropy(["a", "b", "c", "d"]), math.log(4))
    assert math.isclose(unigram_entropy([1, 1, 2, 2]), math.log(2))
    p = [0.75, 0.25]
    assert math.isclose(unigram_entropy([0, 0, 0, 1]), -sum(q * math.log(q) for q in p))
