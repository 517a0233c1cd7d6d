"""Sample-quality numbers that are reported together (docs/numerics.md#reporting-sample-quality)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence


def unigram_entropy(tokens: Sequence[Hashable]) -> float:
    """``−Σ_w f_w log f_w`` of the token (or word) frequencies within one sample; 0 for an empty sample."""
    counts = Counter(tokens)
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values()) if n else 0.0


def perplexity(scorer, texts: list[str]) -> float:
    """Generative perplexity ``exp(−Σ log p / Σ tokens)`` of ``texts`` under a ``CausalLMScorer`` (each text + EOS,
    retokenised with the scorer's tokenizer, conditioned on its prompt)."""
    ids = scorer.encode(texts)
    return math.exp(-float(scorer.log_prob_ids(ids).sum()) / sum(len(i) + 1 for i in ids))
