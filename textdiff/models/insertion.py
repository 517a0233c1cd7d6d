"""Insertion model: the x0 predictor of the deletion process (docs/deletion.md#insertion-model,
Levenshtein-Transformer style).

One BERT encoder, two heads:

* **count head** on ``(x_t, t)``: for every slot ``j = 0..m`` a categorical over ``0..K`` inserted tokens, from the
  concatenated hidden states of the two tokens around the slot (``[CLS]`` and ``[SEP]`` close the ends); the time
  enters as a sinusoidal embedding added to every input embedding (the count posterior depends on ``t``);
* **token head** on the expanded sequence (placeholders = ``[MASK]``): an MLM head tied to the word embeddings; no
  time input (the fill posterior is time-agnostic).

Inputs are bare token ids ``[B, L]`` (no specials) with a left-aligned bool ``attention_mask``; the model adds
``[CLS]``/``[SEP]`` itself. A network only: sampling lives in ``textdiff.udm.deletion``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, PretrainedConfig, PreTrainedModel

from textdiff.models.time import time_features
from textdiff.support import forbid


class InsertionConfig(PretrainedConfig):
    """Hyper-parameters of :class:`InsertionModel`; ``max_count`` is ``K`` (slot-count classes ``0..K``),
    ``max_seq_length``
    the longest bare sequence (no specials) the model accepts."""

    model_type = "textdiff-insertion"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 1024,
        max_seq_length: int = 32,
        max_count: int = 32,
        hidden_dropout_prob: float = 0.1,
        pad_token_id: int = 0,
        cls_token_id: int = 101,
        sep_token_id: int = 102,
        mask_token_id: int = 103,
        excluded_token_ids: tuple[int, ...] = (),
        **kwargs,
    ):
        if max_count < 1:
            raise ValueError(f"max_count (K) must be >= 1, got {max_count}")
        if max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {max_seq_length}")
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.intermediate_size, self.hidden_dropout_prob = intermediate_size, hidden_dropout_prob
        self.max_seq_length, self.max_count = max_seq_length, max_count
        self.cls_token_id, self.sep_token_id, self.mask_token_id = cls_token_id, sep_token_id, mask_token_id
        self.excluded_token_ids = list(excluded_token_ids)
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    def bert_config(self) -> BertConfig:
        return BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_seq_length + 2,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.hidden_dropout_prob,
            pad_token_id=self.pad_token_id,
        )


class InsertionModel(PreTrainedModel):
    """Shared encoder + slot-count head + token head (see the module docs)."""

    config_class = InsertionConfig
    base_model_prefix = "insertion"
    _tied_weights_keys = {"token_decoder.weight": "encoder.embeddings.word_embeddings.weight"}

    def __init__(self, config: InsertionConfig):
        super().__init__(config)
        hidden = config.hidden_size
        self.encoder = BertModel(config.bert_config(), add_pooling_layer=False)
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.count_head = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, config.max_count + 1)
        )
        self.token_transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.token_decoder = nn.Linear(hidden, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.encoder.embeddings.word_embeddings

    def get_output_embeddings(self):
        return self.token_decoder

    def _encode(self, ids: Tensor, attention_mask: Tensor, t: Tensor | None) -> Tensor:
        """Hidden states of ``[CLS] ids [SEP]`` (``[B, L+2, H]``); ``t`` (``[B]``) adds the time embedding."""
        if ids.shape[1] > self.config.max_seq_length:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_seq_length={self.config.max_seq_length}")
        batch = ids.shape[0]
        lengths = attention_mask.sum(1)
        wrapped = torch.full((batch, ids.shape[1] + 2), self.config.pad_token_id, dtype=torch.long, device=ids.device)
        wrapped[:, 0] = self.config.cls_token_id
        wrapped[:, 1:-1] = ids.masked_fill(~attention_mask, self.config.pad_token_id)
        wrapped.scatter_(1, (lengths + 1)[:, None], self.config.sep_token_id)
        full_mask = torch.arange(wrapped.shape[1], device=ids.device)[None, :] < (lengths + 2)[:, None]
        embeds = self.encoder.embeddings.word_embeddings(wrapped)
        if t is not None:
            embeds = embeds + self.time_mlp(time_features(t, self.config.hidden_size).to(embeds.dtype))[:, None, :]
        out = self.encoder(inputs_embeds=embeds, attention_mask=full_mask.long())
        return out.last_hidden_state

    def count_logits(self, ids: Tensor, attention_mask: Tensor, t: Tensor) -> Tensor:
        """Slot-count logits ``[B, L+1, K+1]`` for ``x_t`` at time ``t`` (slot ``j`` between tokens ``j−1``
        and ``j``)."""
        hidden = self._encode(ids, attention_mask, t)
        pairs = torch.cat([hidden[:, :-1], hidden[:, 1:]], dim=-1)
        return self.count_head(pairs).float()

    def token_logits(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Token logits ``[B, L, V]`` on an expanded sequence; special tokens get ``−inf``."""
        hidden = self._encode(ids, attention_mask, None)[:, 1:-1]
        return self._exclude(self.token_decoder(self.token_transform(hidden)).float())

    def _exclude(self, logits: Tensor) -> Tensor:
        """Special tokens (``config.excluded_token_ids``) can never be inserted: their logits become ``−inf``. The
        sampler adds the tokenizer's other non-text pieces (``[unused*]``; ``textdiff.udm.deletion.predictor_for``)."""
        return forbid(logits, torch.as_tensor(self.config.excluded_token_ids, dtype=torch.long))

    def forward(self, ids_t, mask_t, t, ids_expanded, mask_expanded, target_counts=None, fill_positions=None,
                target_ids=None):
        """Training pass (docs/deletion.md#training): count logits on ``x_t``, token logits at ``fill_positions`` of
        ``y``.

        With targets, returns ``(count_nll [B], fill_nll [B])`` summed per row; otherwise the two logits tensors.
        """
        count_logits = self.count_logits(ids_t, mask_t, t)
        hidden = self._encode(ids_expanded, mask_expanded, None)[:, 1:-1]
        token_logits = self._exclude(self.token_decoder(self.token_transform(hidden[fill_positions])).float())
        if target_counts is None:
            return count_logits, token_logits
        slots = torch.arange(count_logits.shape[1], device=ids_t.device)[None, :] <= mask_t.sum(1)[:, None]
        targets = target_counts.clamp(max=self.config.max_count)[..., None]
        count_nll = -torch.log_softmax(count_logits, -1).gather(-1, targets)
        count_nll = (count_nll.squeeze(-1) * slots).sum(1)
        token_nll = -torch.log_softmax(token_logits, -1).gather(-1, target_ids[fill_positions][:, None]).squeeze(-1)
        rows = fill_positions.nonzero()[:, 0]
        fill_nll = torch.zeros(ids_t.shape[0], device=ids_t.device).index_add_(0, rows, token_nll)
        return count_nll, fill_nll


def init_from_bert(model: InsertionModel, bert_dir: str) -> InsertionModel:
    """Copy embeddings and the first ``num_hidden_layers`` layers of a local BERT checkpoint (e.g. MiniLM)."""
    source = BertModel.from_pretrained(bert_dir)
    if source.config.hidden_size != model.config.hidden_size:
        raise ValueError(f"hidden_size mismatch: {source.config.hidden_size} vs {model.config.hidden_size}")
    target = model.encoder
    width = model.config.max_seq_length + 2
    with torch.no_grad():
        target.embeddings.word_embeddings.weight.copy_(source.embeddings.word_embeddings.weight)
        target.embeddings.position_embeddings.weight.copy_(source.embeddings.position_embeddings.weight[:width])
        target.embeddings.token_type_embeddings.weight.copy_(source.embeddings.token_type_embeddings.weight)
        target.embeddings.LayerNorm.load_state_dict(source.embeddings.LayerNorm.state_dict())
        for layer_t, layer_s in zip(target.encoder.layer, source.encoder.layer):
            layer_t.load_state_dict(layer_s.state_dict())
    model.tie_weights()
    return model


AutoConfig.register(InsertionConfig.model_type, InsertionConfig)
AutoModel.register(InsertionConfig, InsertionModel)
