"""Exact stochastic unigram tokenization (ALGORITHMS.md §8): Viterbi decoding and exact Viterbi sampling,
batched on CPU and CUDA, with SentencePiece / HF tokenizers compatible normalisation."""

from textdiff.tokenization.collate import SegmentationTransform, UnigramCollator
from textdiff.tokenization.tokenizer import UnigramTokenizer

__all__ = ["UnigramTokenizer", "UnigramCollator", "SegmentationTransform"]
