"""Exact stochastic unigram tokenization: Viterbi decoding and exact Viterbi sampling, batched on CPU and CUDA, with
SentencePiece's own normalisation and decoding rules (docs/tokenization.md)."""

from textdiff.tokenization.collate import SegmentationTransform, UnigramCollator
from textdiff.tokenization.encoding import Encoding
from textdiff.tokenization.tokenizer import UnigramTokenizer

__all__ = ["UnigramTokenizer", "Encoding", "UnigramCollator", "SegmentationTransform"]
