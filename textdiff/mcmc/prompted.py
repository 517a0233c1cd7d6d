"""A causal LM run as short rows after long prompts: the keyword sentences' scoring and drafting
(docs/mcmc.md#rows-after-prompts).

Every row the keyword target scores, and every draft it decodes, follows its keyword set's instruction prompt (about
150 tokens) with a dozen tokens of its own. A prompt runs once (:meth:`prompt`); what a row needs of it is its keys
and values in every layer and the distribution of the token after it (a :class:`Prompt`). Two engines share one
interface, ``prompt(ids)`` and ``logits(rows, prompts, counts)``; drafts decode after the prompts of either through
:class:`PlainDecoding`:

* :class:`PromptedLM`, for models with the Llama layout (Llama, Mistral, Qwen2, SmolLM2), checked once per model
  against the plain forward; the default on CPU. A prompt's keys and values are stored once, ``[kv heads, P, head
  dim]`` per layer; each token attends to them and to its own row apart, the two softmaxes merged exactly by their
  maxima and sums: over the prompt, the queries of all tokens after one prompt (the grouped query heads folded into the
  rows) meet its keys in one product per key-value head, with no per-row copy and no repeat per query head; over the
  row, rows of one bucketed width are padded to it. The linear layers run on the rows' real tokens packed end to end
  (no padding), the output head only at the positions asked for.
* :class:`PlainLM`, any other Hugging Face causal LM, and every model on CUDA: the model's own forward on a KV cache
  of the prompt, rows grouped by prompt width and row width (:func:`textdiff.compat.kv_cache_rows`).

In both, a row's numbers depend on its own tokens and prompt only, never on what shares its call (on CPU with one
thread, where a matrix product gives a row the same bits for any number of rows from
:data:`~textdiff.mcmc.positions.MIN_HEAD_ROWS` up).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from textdiff.compat import kv_cache_argument, kv_cache_of, kv_cache_rows
from textdiff.mcmc.positions import at_least_rows, logits_at
from textdiff.padding import bucket, by_width, pad

_MATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> whether PromptedLM reproduces it


@dataclass(frozen=True, eq=False)
class Prompt:
    """A prompt run once: its ids, ``log p(· | prompt)`` ``[V]`` (float64, CPU) and the model's state after it: its KV
    cache (both engines; :class:`PlainDecoding` decodes on it) and, for :class:`PromptedLM`, the same keys and values
    per layer as ``[kv heads, P', head dim]``, zero-padded to ``P'`` positions (the cache views them)."""

    ids: tuple[int, ...]
    log_probs: torch.Tensor
    keys: tuple = ()
    values: tuple = ()
    cache: object = None


def prompted_engine(model) -> PromptedLM | PlainLM:
    """The engine for ``model``: on CPU :class:`PromptedLM` when the model has the Llama layout and reproduces its own
    logits (within 1e-4 of their largest magnitude in float32; checked once per model), else :class:`PlainLM`. On CUDA
    the model's own forward stays, with its fused attention kernels, until the packed path (a few small products per
    prompt and layer) has been timed there (docs/mcmc.md#rows-after-prompts)."""
    if next(model.parameters()).device.type != "cpu" or not PromptedLM.has_layout(model):
        return PlainLM(model)
    if model not in _MATCHES:
        _MATCHES[model] = PromptedLM(model).matches_model()
    return PromptedLM(model) if _MATCHES[model] else PlainLM(model)


def _rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x [T, heads, D]`` (``cos``/``sin`` ``[T, 1, D]``), as the Llama layout does."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


class PromptedLM:
    """Rows after prompts through a Llama-layout decoder, each prompt's keys and values stored once (module docs)."""

    def __init__(self, model):
        self.model, self.base, self.head = model, model.base_model, model.get_output_embeddings()
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.device = next(model.parameters()).device

    @staticmethod
    def has_layout(model) -> bool:
        """Embeddings, rotary embedding, decoder layers with ``q/k/v/o_proj``, two norms and an MLP, a final norm,
        an output head, and full attention (no sliding window)."""
        base = getattr(model, "base_model", None)
        config = getattr(model, "config", None)
        needed = ("embed_tokens", "rotary_emb", "layers", "norm")
        if base is None or base is model or config is None or not all(hasattr(base, n) for n in needed):
            return False
        if getattr(config, "sliding_window", None) or not hasattr(config, "num_key_value_heads"):
            return False
        if not isinstance(model.get_output_embeddings(), torch.nn.Linear):
            return False
        parts = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
        projections = ("q_proj", "k_proj", "v_proj", "o_proj")
        return all(all(hasattr(layer, p) for p in parts) and all(hasattr(layer.self_attn, p) for p in projections)
                   and hasattr(layer.self_attn, "scaling") for layer in base.layers)

    @torch.no_grad()
    def matches_model(self) -> bool:
        """Whether the logits of a row after a prompt equal the model's own forward on the two together."""
        vocab = self.model.config.vocab_size
        ids = [i % vocab for i in range(3, 13)]
        try:
            full = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0, 5:-1].float()
            mine = self.logits([ids[5:]], [self.prompt(ids[:5])], [4]).float()
        except Exception:  # a probe: a model that does not run this way keeps its own forward
            return False
        tolerance = 1e-4 if full.dtype == torch.float32 and self.head.weight.dtype == torch.float32 else 3e-2
        return mine.shape == full.shape and bool((mine - full).abs().max() <= tolerance * full.abs().max().clamp(min=1))

    @torch.no_grad()
    def prompt(self, ids: Sequence[int]) -> Prompt:
        """Run ``ids`` once: their keys and values per layer, zero-padded to a multiple of 32 positions (a width fixed
        by the prompt, from which neither a batched product nor a vectorised ``exp`` treats a row by the number of
        rows), and the next-token distribution. The prompt's KV cache, for :class:`PlainDecoding`, views the same
        storage."""
        out = self.base(input_ids=torch.tensor([list(ids)], device=self.device), use_cache=True)
        cache = kv_cache_of(out)
        last = self.head(out.last_hidden_state[0, -1:].contiguous())[0]
        width = bucket(len(ids), 32)
        stored = {"keys": [], "values": []}
        for layer in cache.layers:
            for name, kept in stored.items():
                padded = torch.nn.functional.pad(getattr(layer, name)[0], (0, 0, 0, width - len(ids)))  # [kv, P', D]
                kept.append(padded)
                setattr(layer, name, padded[None, :, : len(ids)])
        return Prompt(tuple(ids), torch.log_softmax(last.double(), -1).cpu(), tuple(stored["keys"]),
                      tuple(stored["values"]), cache)

    def _layers(self, tokens: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        """Final hidden states ``[T, H]`` of packed tokens ``[T]`` at ``positions [T]``; ``attend(layer, q, k, v)``
        mixes the rotated ``q [T, heads, D]``, ``k``/``v [T, kv heads, D]`` into ``[T, heads · D]``."""
        count = len(tokens)
        tokens, positions = at_least_rows(tokens), at_least_rows(positions)  # zero tokens: a row's bits never vary
        x = self.base.embed_tokens(tokens)  # [T, H]
        cos, sin = (part[0, :, None] for part in self.base.rotary_emb(x[None], positions[None]))  # [T, 1, D]
        rows = len(x)
        for number, layer in enumerate(self.base.layers):
            attention = layer.self_attn
            y = layer.input_layernorm(x)
            q = _rotated(attention.q_proj(y).view(rows, self.heads, self.head_dim), cos, sin)
            k = _rotated(attention.k_proj(y).view(rows, self.kv_heads, self.head_dim), cos, sin)
            v = attention.v_proj(y).view(rows, self.kv_heads, self.head_dim)
            mixed = at_least_rows(attend(number, q[:count], k[:count], v[:count]))  # [rows, heads · D]
            x = x + attention.o_proj(mixed)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.base.norm(x)[:count]

    def _on_prompt(self, number: int, prompt: Prompt, q: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Attention of ``q [t, heads, D]`` over the prompt's keys alone, unnormalised: ``(Σ e·V [t, heads, D], max
        score [t, heads], Σ e [t, heads])`` with ``e = exp(score − max)``; one batched product per key-value head's
        queries (the grouped query heads folded into rows), at least 16 rows."""
        t, groups = len(q), self.heads // self.kv_heads
        keys, values = prompt.keys[number], prompt.values[number]  # [kv, P', D]
        flat = q.view(t, self.kv_heads, groups, self.head_dim).transpose(0, 1).reshape(self.kv_heads, -1, self.head_dim)
        rows = flat.shape[1]
        flat = at_least_rows(flat, 1)
        scores = torch.bmm(flat, keys.transpose(1, 2)).float() * self.base.layers[number].self_attn.scaling
        scores[..., len(prompt.ids):] = float("-inf")  # [kv, r, P']: the zero padding left out
        top = scores.amax(-1, keepdim=True)
        weights = torch.exp(scores - top)
        out = torch.bmm(weights.to(q.dtype), values)[:, :rows]  # [kv, t·g, D]

        def per_token(x: torch.Tensor) -> torch.Tensor:  # [kv, t·g, ...] -> [t, heads, ...]
            return x.reshape(self.kv_heads, t, groups, -1).transpose(0, 1).reshape(t, self.heads, -1)

        return per_token(out), per_token(top[:, :rows])[..., 0], per_token(weights.sum(-1)[:, :rows, None])[..., 0]

    def _on_rows(self, number: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
                 ) -> tuple[torch.Tensor, ...]:
        """Attention of ``q [m, w, heads, D]`` over the rows' own ``k``/``v [m, w, kv heads, D]`` where ``allowed
        [m, w, w]``, unnormalised as in :meth:`_on_prompt` (each ``[m, w, heads, ...]``); one product per row and
        key-value head."""
        m, w, groups = len(q), q.shape[1], self.heads // self.kv_heads
        q = q.view(m, w, self.kv_heads, groups, self.head_dim).permute(0, 2, 3, 1, 4)  # [m, kv, g, w, D]
        q = q.reshape(m * self.kv_heads, groups * w, self.head_dim)
        k, v = (t.permute(0, 2, 1, 3).reshape(m * self.kv_heads, w, self.head_dim) for t in (k, v))
        scores = torch.bmm(q, k.transpose(1, 2)).view(m, self.kv_heads, groups, w, w).float()
        scores = scores.masked_fill(~allowed[:, None, None], float("-inf")) * self.base.layers[number].self_attn.scaling
        top = scores.amax(-1, keepdim=True)
        weights = torch.exp(scores - top)  # w·w values per query row block: a multiple of 64, never a short tail
        out = torch.bmm(weights.to(v.dtype).view(m * self.kv_heads, groups * w, w), v)

        def per_token(x: torch.Tensor) -> torch.Tensor:  # [m, kv, g, w, ...] -> [m, w, heads, ...]
            return x.reshape(m, self.kv_heads, groups, w, -1).permute(0, 3, 1, 2, 4).reshape(m, w, self.heads, -1)

        return per_token(out), per_token(top)[..., 0], per_token(weights.sum(-1, keepdim=True))[..., 0]

    @torch.no_grad()
    def logits(self, rows: Sequence[Sequence[int]], prompts: Sequence[Prompt], counts: Sequence[int]) -> torch.Tensor:
        """``[Σ counts, V]``: the logits after each of the first ``counts[i]`` tokens of row ``i`` (which follows
        ``prompts[i]``), rows in order; every row in one pass.

        Attention is split in two softmaxes merged exactly by their maxima and sums: over the prompt, for each
        prompt's tokens (rows are packed prompt by prompt, so these are one slice); over the rows' own tokens, for each
        group of rows of one bucketed width, padded to it."""
        by_prompt: dict[int, tuple[Prompt, list[int]]] = {}
        for i, prompt in enumerate(prompts):
            by_prompt.setdefault(id(prompt), (prompt, []))[1].append(i)
        order = [i for _, members in by_prompt.values() for i in members]  # packing order: prompt by prompt
        lengths = [len(rows[i]) for i in order]
        tokens = torch.tensor([t for i in order for t in rows[i]], dtype=torch.long, device=self.device)
        offsets = [0, *itertools.accumulate(lengths)]
        starts = torch.tensor(offsets[:-1], device=self.device)
        positions = torch.cat([torch.arange(len(rows[i]), device=self.device) + len(prompts[i].ids) for i in order])
        prompt_plan, done = [], 0
        for prompt, members in by_prompt.values():
            prompt_plan.append((prompt, offsets[done], offsets[done + len(members)]))
            done += len(members)
        row_plan = []
        for width, members in by_width(lengths):
            n = torch.tensor([lengths[i] for i in members], device=self.device)[:, None]
            column = torch.arange(width, device=self.device)[None]
            real = column < n  # [m, w]
            slots = torch.where(real, starts[members][:, None] + column, len(tokens))  # len(tokens): a zero row
            row_plan.append((slots, real, (column[:, :, None] >= column[:, None, :]) & real[:, None, :]))

        def attend(number, q, k, v):
            on_prompt = [torch.cat(parts).float() for parts in zip(  # over the prompt
                *(self._on_prompt(number, prompt, q[first:last]) for prompt, first, last in prompt_plan))]
            on_rows = [q.new_empty(shape, dtype=torch.float32) for shape in (q.shape, q.shape[:2], q.shape[:2])]
            q, k, v = (torch.cat([t, t.new_zeros(1, *t.shape[1:])]) for t in (q, k, v))  # row len(tokens) = zeros
            for slots, real, allowed in row_plan:
                for part, value in zip(on_rows, self._on_rows(number, q[slots], k[slots], v[slots], allowed)):
                    part[slots[real]] = value[real].float()
            (out_p, top_p, sum_p), (out_r, top_r, sum_r) = on_prompt, on_rows
            top = torch.maximum(top_p, top_r)
            scale_p, scale_r = _exp_per_value(top_p - top), _exp_per_value(top_r - top)
            total = sum_p * scale_p + sum_r * scale_r
            mixed = (out_p * scale_p[..., None] + out_r * scale_r[..., None]) / total[..., None]
            return mixed.to(q.dtype).flatten(1)

        hidden = self._layers(tokens, positions, attend)
        start_of = dict(zip(order, offsets))
        picked = torch.cat([torch.arange(c, device=self.device) + start_of[i] for i, c in enumerate(counts)])
        return self.head(at_least_rows(hidden[picked]))[: len(picked)]


def _exp_per_value(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)``, each value computed in a block of 32 copies of itself: a vectorised ``exp`` leaves the last values
    of a tensor to a scalar loop whose bits differ, and which values those are depends on how many tokens share the
    call. Whole blocks of 32 are never left over (docs/mcmc.md#rows-after-prompts)."""
    return torch.exp(x[..., None].expand(*x.shape, 32).contiguous())[..., 0]


class PlainLM:
    """Rows after prompts through the model's own forward, on a KV cache of each prompt (module docs)."""

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def prompt(self, ids: Sequence[int]) -> Prompt:
        """Run ``ids`` once: their KV cache and the next-token distribution."""
        out = self.model(input_ids=torch.tensor([list(ids)], device=self.device), use_cache=True)
        return Prompt(tuple(ids), torch.log_softmax(out.logits[0, -1].double(), -1).cpu(), cache=kv_cache_of(out))

    @torch.no_grad()
    def logits(self, rows: Sequence[Sequence[int]], prompts: Sequence[Prompt], counts: Sequence[int]) -> torch.Tensor:
        """:meth:`PromptedLM.logits`, in calls grouped by prompt width and row width (each row's padding is fixed by
        its own lengths)."""
        out: list[torch.Tensor | None] = [None] * len(rows)
        groups: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(bucket(len(prompt.ids)), []).append(i)
        for p_width, members in groups.items():
            for width, chunk in by_width([len(rows[i]) for i in members]):
                chunk = [members[i] for i in chunk]
                part = self._logits([rows[i] for i in chunk], [prompts[i] for i in chunk], [counts[i] for i in chunk],
                                    p_width, width)
                for i, piece in zip(chunk, part.split([counts[i] for i in chunk])):
                    out[i] = piece
        return torch.cat(out)

    def _logits(self, rows, prompts, counts, p_width: int, width: int) -> torch.Tensor:
        ids, mask = pad(rows, 0, width=width)
        cache = kv_cache_rows([p.cache for p in prompts], p_width)
        lengths = torch.tensor([len(p.ids) for p in prompts])
        seen = torch.arange(p_width)[None] >= p_width - lengths[:, None]  # [n, p_width]: the prompt, left-padded
        attention = torch.cat([seen, mask], 1).long().to(self.device)
        positions = (lengths[:, None] + torch.arange(width)[None]).to(self.device)
        where = torch.arange(width)[None] < torch.tensor(counts)[:, None]
        return logits_at(self.model, ids.to(self.device), attention, where.to(self.device), position_ids=positions,
                         **kv_cache_argument(self.model, cache))


class PlainDecoding:
    """Rows decoding after their prompts (of either engine, whose lengths share one bucketed width) through the
    model's own forward, one token per row per :meth:`step`: the prompts' KV caches left-padded to one width, rows may
    leave. One new token per row fills small products that favour the model's fused attention
    (docs/mcmc.md#rows-after-prompts)."""

    def __init__(self, model, prompts: list[Prompt]):
        self.model, self.prompts = model, prompts
        device = next(model.parameters()).device
        width = bucket(max(len(p.ids) for p in prompts))
        lengths = torch.tensor([len(p.ids) for p in prompts], device=device)
        self.cache = kv_cache_rows([p.cache for p in prompts], width)
        self.mask = (torch.arange(width, device=device)[None] >= width - lengths[:, None]).long()
        self.positions = lengths[:, None] - 1

    def first(self) -> torch.Tensor:
        """``[rows, V]`` float64 log-probabilities of every row's first token (its prompt's)."""
        return torch.stack([p.log_probs for p in self.prompts]).to(self.mask.device)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the current rows, in order)."""
        self.prompts = [self.prompts[i] for i in rows.tolist()]
        self.mask, self.positions = self.mask[rows], self.positions[rows]
        self.cache.reorder_cache(rows)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens [rows]`` and return the logits of every row's next token ``[rows, V]``."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        self.positions = self.positions + 1
        out = self.model(input_ids=tokens[:, None].to(self.mask.device), attention_mask=self.mask,
                         position_ids=self.positions, **kv_cache_argument(self.model, self.cache))
        self.cache = kv_cache_of(out)
        return out.logits[:, -1]
