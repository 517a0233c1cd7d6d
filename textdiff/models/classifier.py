"""An HF sequence classifier as a guidance classifier (docs/guidance.md#classifier-guidance): ``labels`` from the
config's ``id2label``, ``log p(y | x)`` for token ids in its vocabulary (``log_probs``) and for texts
(``log_probs_texts``), float64."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from textdiff import checks
from textdiff.padding import by_width, pad


class SequenceClassifier:
    """``model`` (an ``AutoModelForSequenceClassification``) with its ``tokenizer``; texts longer than
    ``max_length`` pieces are truncated. Texts are scored in batches of similar width (``max_batch_tokens``), padded
    to a width fixed by their own lengths, so a text's score does not depend on its batchmates."""

    def __init__(self, model, tokenizer, max_length: int = 128, max_batch_tokens: int = 8192):
        self.model, self.tokenizer = model, tokenizer
        self.max_length = checks.positive_int("max_length", max_length)
        self.max_batch_tokens = checks.positive_int("max_batch_tokens", max_batch_tokens)
        config = model.config
        self.labels = tuple(str(config.id2label[i]) for i in range(config.num_labels))
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def log_probs(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``log p(y | x)`` ``[N, C]`` for token ids ``[N, L]`` (with the classifier's special tokens)."""
        logits = self.model(input_ids=ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
        return torch.log_softmax(logits.double(), -1)

    def log_probs_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``log p(y | text)`` ``[N, C]`` (on CPU)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        out = torch.empty(len(encoded), len(self.labels), dtype=torch.float64)
        for width, chunk in by_width([len(e) for e in encoded], max_tokens=self.max_batch_tokens):
            ids, mask = pad([encoded[i] for i in chunk], self.tokenizer.pad_token_id or 0, width=width)
            out[chunk] = self.log_probs(ids, mask.long()).cpu()
        return out
