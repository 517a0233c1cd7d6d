"""Guidance scores: the log-weight ``log w(x)`` that guidance tilts a sampler by (docs/guidance.md#guidance-scores).

A score gives ``log w`` for token states (``log_weight(ids, attention_mask) -> [N]`` float64, ids in the sampler's
vocabulary, possibly holding ``[MASK]``) and for texts (``log_weight_texts(texts) -> [N]``, for samplers whose states
are decoded text, such as MH generation). Guidance with strength ``γ`` multiplies the law by ``w(x)^γ``:

* :class:`ClassifierScore`: ``log p(y | x)`` of a classifier for one label ``y``;
* :class:`SimilarityScore`: ``sim(x, ref)``, the cosine of sentence embeddings (a defined tilt, not a posterior).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from textdiff import checks


class GuidanceScore(Protocol):
    def log_weight(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def log_weight_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


class Classifier(Protocol):
    """What :class:`ClassifierScore` needs: ``labels`` and ``log_probs(ids, attention_mask) -> [N, C]``
    (``log_probs_texts(texts)`` for text-space samplers)."""

    labels: tuple[str, ...]

    def log_probs(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


def require_same_vocabulary(sampler_tokenizer, classifier_tokenizer, what: str = "classifier") -> None:
    """``ValueError`` unless both tokenizers map the same pieces to the same ids: a guidance model reads the sampler's
    token ids as they are, so a different vocabulary would score other words."""
    ours, theirs = sampler_tokenizer.get_vocab(), classifier_tokenizer.get_vocab()
    if ours != theirs:
        differing = sorted(set(ours.items()) ^ set(theirs.items()))[:1]
        raise ValueError(f"the {what}'s tokenizer does not match the sampler's ({len(ours)} vs {len(theirs)} pieces"
                         f"{', e.g. ' + repr(differing[0]) if differing else ''}); use a {what} trained on the "
                         "sampler's vocabulary")


class ClassifierScore:
    """``log p(y | x)`` for one ``label`` of ``classifier`` (:class:`Classifier`), or of a plain callable
    ``(ids, attention_mask) -> log p(y | x) [N]``. States go through in chunks of ``batch_size`` rows."""

    def __init__(self, classifier: Classifier | Callable, label: str | None = None, batch_size: int = 512):
        self.classifier, self.batch_size = classifier, checks.positive_int("batch_size", batch_size)
        labels = tuple(getattr(classifier, "labels", ()) or ())
        if labels:
            checks.one_of("label", label, labels)
            self.index = labels.index(label)
        elif not callable(classifier):
            raise TypeError("classifier must have labels and log_probs() or be callable, got "
                            f"{type(classifier).__name__}")
        else:
            self.index = None
        self.label = label

    def log_weight(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        chunks = [self._score(ids[i: i + self.batch_size], attention_mask[i: i + self.batch_size])
                  for i in range(0, ids.shape[0], self.batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64, device=ids.device)

    def _score(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return self.classifier(ids, attention_mask).double()
        return self.classifier.log_probs(ids, attention_mask)[:, self.index].double()

    def log_weight_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if self.index is None or not hasattr(self.classifier, "log_probs_texts"):
            raise TypeError("this classifier scores token ids only; give one with log_probs_texts(texts) to guide a "
                            "text-space sampler")
        return self.classifier.log_probs_texts(list(texts))[:, self.index].double()


class SimilarityScore:
    """``sim(x, ref)``: cosine between the sentence embedding of ``x`` and the mean embedding of ``references``
    (``encoder``: ``embed_ids(ids, attention_mask)`` and ``embed_texts(texts)``, L2-normalised rows)."""

    def __init__(self, encoder, references: str | Sequence[str]):
        references = [references] if isinstance(references, str) else list(references)
        if not references or not all(isinstance(r, str) and r.strip() for r in references):
            raise ValueError(f"references must be one or more non-empty texts, got {references!r}")
        self.encoder = encoder
        target = encoder.embed_texts(references).double().mean(0)
        self.target = target / target.norm()

    def log_weight(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed_ids(ids, attention_mask).double() @ self.target.to(ids.device)

    def log_weight_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encoder.embed_texts(list(texts)).double() @ self.target
