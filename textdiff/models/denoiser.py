"""x0 predictors: a bidirectional transformer denoiser (HF ``PreTrainedModel``) and a wrapper that makes any
``AutoModelForMaskedLM`` a masking-process predictor (docs/udm.md#the-x0-predictor).

Decisions: pre-LayerNorm transformer (nanoGPT-style blocks, ``scaled_dot_product_attention``) with rotary position
embeddings (RoPE, as MDLM/SEDD's DiT; no learned absolute positions, so attention to neighbours is easy to learn —
an absorbing-diffusion model has no residual path from the token it predicts, unlike an AR model, and learned
absolute positions made it plateau near the unigram loss at small budgets) and tied input/output embeddings; optional
time conditioning (a sinusoidal embedding of ``t`` added to every position; off by default because the masking
posterior is time-agnostic, docs/udm.md#subs-parameterisation-and-time-agnostic-posterior); ``causal=True`` gives the
autoregressive baseline of the same size (``--objective ar``).
Checkpoints are safetensors only: directories holding pickle weights are refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from textdiff.mcmc.positions import logits_at
from textdiff.models.time import time_features
from textdiff.models.weights import check_safetensors_dir
from textdiff.support import subs
from textdiff.udm.process import Batch


class DenoiserConfig(PretrainedConfig):
    """Configuration of :class:`DenoiserModel`."""

    model_type = "textdiff_denoiser"

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 256, num_hidden_layers: int = 4,
                 num_attention_heads: int = 4, intermediate_size: int | None = None, max_position_embeddings: int = 512,
                 dropout: float = 0.0, time_conditioning: bool = False, causal: bool = False,
                 mask_token_id: int | None = None, pad_token_id: int | None = None, **kwargs):
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads "
                             f"({num_attention_heads})")
        if (hidden_size // num_attention_heads) % 2:
            raise ValueError(f"the head size hidden_size / num_attention_heads must be even (rotary pairs), got "
                             f"{hidden_size // num_attention_heads}")
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.intermediate_size = intermediate_size or 4 * hidden_size
        self.max_position_embeddings, self.dropout = max_position_embeddings, dropout
        self.time_conditioning, self.causal, self.mask_token_id = time_conditioning, causal, mask_token_id


def rotary_tables(length: int, head_dim: int, device, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of RoPE angles ``pos · base^(−2j/head_dim)``, each ``[length, head_dim / 2]`` (float32)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate the feature pairs ``(x_j, x_{j+D/2})`` of ``x [B, H, L, D]`` by the position angles, so that
    ``⟨rot(q, i), rot(k, j)⟩`` depends on ``i − j`` only."""
    cos, sin = (r.to(x.dtype) for r in rotary)
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def attention_pattern(attention_mask: torch.Tensor | None, length: int, causal: bool, device) -> torch.Tensor | None:
    """Boolean ``[B or 1, 1, L, L]`` (True = may attend): real keys (``attention_mask``), the past when ``causal``;
    every query may attend to itself, so padded rows never produce NaN. ``None`` when nothing is masked."""
    allowed = None
    if attention_mask is not None and not bool(attention_mask.all()):
        allowed = attention_mask.bool()[:, None, None, :]
    if causal:
        past = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        allowed = past if allowed is None else allowed & past
    if allowed is not None:
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=device)
    return allowed


class Block(nn.Module):
    """Pre-LayerNorm transformer block: RoPE multi-head self-attention, then a GELU MLP, both residual."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        h = config.hidden_size
        self.heads, self.dropout = config.num_attention_heads, config.dropout
        self.norm1, self.norm2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.mlp = nn.Sequential(nn.Linear(h, config.intermediate_size), nn.GELU(),
                                 nn.Linear(config.intermediate_size, h), nn.Dropout(config.dropout))

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                allowed: torch.Tensor | None) -> torch.Tensor:
        B, L, H = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(apply_rotary(q, rotary), apply_rotary(k, rotary), v,
                                                       attn_mask=allowed,
                                                       dropout_p=self.dropout if self.training else 0.0)
        x = x + nn.functional.dropout(self.proj(y.transpose(1, 2).reshape(B, L, H)), self.dropout, self.training)
        return x + self.mlp(self.norm2(x))


class DenoiserModel(PreTrainedModel):
    """Bidirectional (or causal) transformer returning logits ``[B, L, V]`` for ``input_ids`` (and ``t``)."""

    config_class = DenoiserConfig
    base_model_prefix = "denoiser"
    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}

    def __init__(self, config: DenoiserConfig):
        super().__init__(config)
        h = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, h)
        self.time_mlp = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h)) if config.time_conditioning else None
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(h)
        self.lm_head = nn.Linear(h, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      t: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states ``[B, L, H]``."""
        B, L = input_ids.shape
        if L > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {L} exceeds "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        x = self.embed_tokens(input_ids)
        if self.time_mlp is not None:
            if t is None:
                raise ValueError("this denoiser is time-conditioned: pass t [B]")
            x = x + self.time_mlp(time_features(torch.as_tensor(t, device=x.device).expand(B), x.shape[-1]))[:, None]
        allowed = attention_pattern(attention_mask, L, self.config.causal, x.device)
        rotary = rotary_tables(L, self.config.hidden_size // self.config.num_attention_heads, x.device)
        for block in self.layers:
            x = block(x, rotary, allowed)
        return self.norm(x)

    def logits_at(self, input_ids, attention_mask, where: torch.Tensor, t=None) -> torch.Tensor:
        """Logits only at ``where [B, L]`` (``[n, V]``): the output projection is skipped elsewhere."""
        return self.lm_head(self.hidden_states(input_ids, attention_mask, t)[where])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                t: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs) -> MaskedLMOutput:
        logits = self.lm_head(self.hidden_states(input_ids, attention_mask, t))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """HF ``from_pretrained`` restricted to safetensors (local directories with pickle weights are refused)."""
        if Path(str(pretrained_model_name_or_path)).exists():
            check_safetensors_dir(pretrained_model_name_or_path)
        kwargs["use_safetensors"] = True
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class DenoiserPredictor:
    """A :class:`DenoiserModel` as a UDM x0 predictor ``(x_t: Batch, t) -> logits [B, L, V]``."""

    def __init__(self, model: DenoiserModel):
        self.model = model
        self.time_conditioned = bool(model.config.time_conditioning)

    @torch.no_grad()
    def __call__(self, x: Batch, t: torch.Tensor) -> torch.Tensor:
        t = t if self.time_conditioned else None
        return self.model(input_ids=x.ids, attention_mask=x.attention_mask, t=t).logits

    @torch.no_grad()
    def logits_at(self, x: Batch, t: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """``self(x, t)[where]`` (``[n, V]``), the output projection run only there."""
        return self.model.logits_at(x.ids, x.attention_mask, where, t if self.time_conditioned else None)


class MaskedLMPredictor:
    """Wraps any HF masked LM (``AutoModelForMaskedLM``) as a masking-process x0 predictor, SUBS-parameterised
    (docs/udm.md#subs-parameterisation-and-time-agnostic-posterior): ``[MASK]`` logit −inf, unmasked positions
    carried over (a point mass on the visible token); the output head runs at the masked positions only
    (:func:`textdiff.mcmc.positions.logits_at`). ``subs=False`` returns the network's logits at every position (for
    the replacement processes)."""

    time_conditioned = False

    def __init__(self, model, mask_token_id: int, subs: bool = True):
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int):
            raise TypeError(f"mask_token_id must be an int, got {type(mask_token_id).__name__}")
        self.model, self.mask_token_id, self.subs = model, mask_token_id, subs

    @torch.no_grad()
    def logits_at(self, x: Batch, t: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """The network's logits at ``where [B, L]`` only (``[n, V]``, row-major; ``[MASK]`` at −inf): what the
        masking sampler reads at the positions it draws (docs/udm.md#logits-only-where-drawn)."""
        return subs(logits_at(self.model, x.ids, x.attention_mask.long(), where).float(), self.mask_token_id)

    @torch.no_grad()
    def __call__(self, x: Batch, t: torch.Tensor) -> torch.Tensor:
        attention = x.attention_mask.long()
        if not self.subs:
            return subs(self.model(input_ids=x.ids, attention_mask=attention).logits.float(), self.mask_token_id)
        masked = x.ids == self.mask_token_id  # the output head runs only here (logits_at)
        at_masks = self.logits_at(x, t, masked)
        out = torch.full((*x.ids.shape, at_masks.shape[-1]), -math.inf, device=x.ids.device)
        out.scatter_(-1, x.ids[..., None], 0.0)  # visible positions: a point mass on their token
        out[masked] = at_masks
        return out
