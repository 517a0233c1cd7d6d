"""A causal LM run as short rows after long prompts: the keyword sentences' scoring and drafting
(docs/mcmc.md#rows-after-prompts).

Every row the keyword target scores, and every draft it decodes, follows its keyword set's instruction prompt (about
150 tokens) with a dozen tokens of its own. A prompt runs once (:meth:`prompt`); what a row needs of it is its keys
and values in every layer and the distribution of the token after it (a :class:`Prompt`). Two engines share one
interface, ``prompt(ids)``, ``logits(rows, prompts, counts)`` and ``decoding(prompts)``:

* :class:`PromptedLM`, for models with the Llama layout (Llama, Mistral, Qwen2, SmolLM2), checked once per model
  against the plain forward; the default on CPU. A prompt's keys and values are stored once, ``[kv heads, P, head
  dim]`` per layer; the queries of all rows of a prompt attend to them in one matrix product per key-value head (the
  grouped query heads folded into its rows), with no per-row copy, no repeat per query head and no concatenation per
  decoding step. The linear layers run on the rows' real tokens packed end to end (no padding); attention runs per
  group of rows of one prompt padded to the rows' own bucketed width. The output head runs only at the positions
  asked for.
* :class:`PlainLM`, any other Hugging Face causal LM, and every model on CUDA: the model's own forward on a KV cache
  of the prompt, rows grouped by prompt width and row width (:func:`textdiff.compat.kv_cache_rows`).

In both, a row's numbers depend on its own tokens and prompt only, never on what shares its call (on CPU with one
thread, where a matrix product gives a row the same bits for any number of rows from
:data:`~textdiff.mcmc.positions.MIN_HEAD_ROWS` up).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from textdiff.compat import kv_cache_argument, kv_cache_of, kv_cache_rows
from textdiff.mcmc.positions import MIN_HEAD_ROWS, logits_at
from textdiff.padding import bucket, by_width, pad

_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False)
class Prompt:
    """A prompt run once: its ids, ``log p(· | prompt)`` ``[V]`` (float64, CPU) and the model's state after it (its
    keys and values: per layer ``[kv heads, P, head dim]`` for :class:`PromptedLM`, a KV cache for
    :class:`PlainLM`)."""

    ids: tuple[int, ...]
    log_probs: torch.Tensor
    keys: tuple = ()
    values: tuple = ()
    cache: object = None


def prompted_engine(model) -> PromptedLM | PlainLM:
    """The engine for ``model``, chosen once per model: on CPU :class:`PromptedLM` when the model has the Llama layout
    and reproduces its own logits (within 1e-4 of their largest magnitude in float32), else :class:`PlainLM`. On CUDA
    the model's own forward stays, with its fused attention kernels, until the packed path (a few small products per
    prompt and layer) has been timed there (``recipes/bench_prompted.py``)."""
    if model not in _ENGINES:
        on_cpu = next(model.parameters()).device.type == "cpu"
        prompted = PromptedLM(model) if on_cpu and PromptedLM.has_layout(model) else None
        _ENGINES[model] = prompted if prompted is not None and prompted.matches_model() else PlainLM(model)
    return _ENGINES[model]


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
        """Run ``ids`` once: their keys and values per layer and the next-token distribution."""
        out = self.base(input_ids=torch.tensor([list(ids)], device=self.device), use_cache=True)
        cache = kv_cache_of(out)
        last = self.head(out.last_hidden_state[0, -1:].contiguous())[0]
        return Prompt(tuple(ids), torch.log_softmax(last.double(), -1).cpu(),
                      tuple(layer.keys[0] for layer in cache.layers), tuple(layer.values[0] for layer in cache.layers))

    def _layers(self, tokens: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        """Final hidden states ``[T, H]`` of packed tokens ``[T]`` at ``positions [T]``; ``attend(layer, q, k, v)``
        mixes the rotated ``q [T, heads, D]``, ``k``/``v [T, kv heads, D]`` into ``[T, heads · D]``."""
        count = len(tokens)
        if count < MIN_HEAD_ROWS:  # zero rows up to the size from which a row's products do not depend on the others
            tokens = torch.cat([tokens, tokens.new_zeros(MIN_HEAD_ROWS - count)])
            positions = torch.cat([positions, positions.new_zeros(MIN_HEAD_ROWS - count)])
        x = self.base.embed_tokens(tokens)  # [T, H]
        cos, sin = (part[0, :, None] for part in self.base.rotary_emb(x[None], positions[None]))  # [T, 1, D]
        rows = len(x)
        for number, layer in enumerate(self.base.layers):
            attention = layer.self_attn
            y = layer.input_layernorm(x)
            q = _rotated(attention.q_proj(y).view(rows, self.heads, self.head_dim), cos, sin)
            k = _rotated(attention.k_proj(y).view(rows, self.kv_heads, self.head_dim), cos, sin)
            v = attention.v_proj(y).view(rows, self.kv_heads, self.head_dim)
            mixed = attend(number, q[:count], k[:count], v[:count])  # [count, heads · D]
            if rows > count:
                mixed = torch.cat([mixed, mixed.new_zeros(rows - count, mixed.shape[1])])
            x = x + attention.o_proj(mixed)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.base.norm(x)[:count]

    def _mix(self, number: int, prompt: Prompt, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
             allowed: torch.Tensor | None) -> torch.Tensor:
        """Attention of ``q [m, w, heads, D]`` (``m`` rows of one prompt, ``w`` new tokens each) over the prompt's keys
        and then the rows' own ``keys``/``values [m, s, kv heads, D]`` where ``allowed [m, w, s]`` (all when
        ``None``) → ``[m, w, heads · D]``."""
        m, w = len(q), q.shape[1]
        groups, scale = self.heads // self.kv_heads, self.base.layers[number].self_attn.scaling
        q = q.view(m, w, self.kv_heads, groups, self.head_dim).permute(2, 0, 3, 1, 4)  # [kv, m, g, w, D]
        prompt_keys, prompt_values = prompt.keys[number], prompt.values[number]  # [kv, P, D]
        length = prompt_keys.shape[1]
        flat = q.reshape(self.kv_heads, m * groups * w, self.head_dim)
        on_prompt = torch.stack([_product(flat[h], prompt_keys[h].T) for h in range(self.kv_heads)])
        keys, values = keys.permute(2, 0, 1, 3)[:, :, None], values.permute(2, 0, 1, 3)[:, :, None]  # [kv, m, 1, s, D]
        on_rows = torch.matmul(q, keys.transpose(-1, -2))  # [kv, m, g, w, s]
        if allowed is not None:
            on_rows = on_rows.masked_fill(~allowed[None, :, None], float("-inf"))
        scores = torch.cat([on_prompt.view(self.kv_heads, m, groups, w, length), on_rows], -1) * scale
        weights = torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype)
        flat = weights[..., :length].reshape(self.kv_heads, m * groups * w, length)
        from_prompt = torch.stack([_product(flat[h], prompt_values[h]) for h in range(self.kv_heads)])
        out = torch.matmul(weights[..., length:], values) + from_prompt.view(self.kv_heads, m, groups, w, self.head_dim)
        return out.permute(1, 3, 0, 2, 4).reshape(m, w, self.heads * self.head_dim)

    @torch.no_grad()
    def logits(self, rows: Sequence[Sequence[int]], prompts: Sequence[Prompt], counts: Sequence[int]) -> torch.Tensor:
        """``[Σ counts, V]``: the logits after each of the first ``counts[i]`` tokens of row ``i`` (which follows
        ``prompts[i]``), rows in order; every row in one pass."""
        lengths = [len(row) for row in rows]
        tokens = torch.tensor([t for row in rows for t in row], dtype=torch.long, device=self.device)
        starts = torch.tensor([0, *lengths], device=self.device).cumsum(0)[:-1]
        positions = torch.cat([torch.arange(n, device=self.device) + len(p.ids) for n, p in zip(lengths, prompts)])
        groups: dict[tuple[int, int], list[int]] = {}  # rows of one prompt and one bucketed width attend together
        for i, (prompt, n) in enumerate(zip(prompts, lengths)):
            groups.setdefault((id(prompt), bucket(n)), []).append(i)
        plan = []
        for (_, width), members in groups.items():
            index = torch.tensor(members, device=self.device)
            n = torch.tensor([lengths[i] for i in members], device=self.device)[:, None]
            column = torch.arange(width, device=self.device)[None]
            real = column < n  # [m, w]
            slots = torch.where(real, starts[index][:, None] + column, len(tokens))  # len(tokens): a zero row
            allowed = (column[:, :, None] >= column[:, None, :]) & real[:, None, :]  # [m, w, w] causal, real keys
            plan.append((prompts[members[0]], slots, real, allowed))

        def attend(number, q, k, v):
            out = q.new_zeros(len(q), self.heads * self.head_dim)
            q, k, v = (torch.cat([t, t.new_zeros(1, *t.shape[1:])]) for t in (q, k, v))  # row len(tokens) = zeros
            for prompt, slots, real, allowed in plan:
                mixed = self._mix(number, prompt, q[slots], k[slots], v[slots], allowed)
                out[slots[real]] = mixed[real]
            return out

        hidden = self._layers(tokens, positions, attend)
        picked = torch.cat([torch.arange(c, device=self.device) + s for c, s in zip(counts, starts.tolist())])
        return _head(self.head, hidden[picked])

    def decoding(self, prompts: Sequence[Prompt], steps: int) -> PromptedDecoding:
        """A decoding of one row per entry of ``prompts`` (up to ``steps`` tokens each)."""
        return PromptedDecoding(self, list(prompts), steps)


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [M, K] @ b [K, N]`` as one plain matrix product, zero rows added below :data:`MIN_HEAD_ROWS` (a batched
    product's rows, or a product of fewer rows, may take other kernels and change a row's bits)."""
    count = len(a)
    if count < MIN_HEAD_ROWS:
        a = torch.cat([a, a.new_zeros(MIN_HEAD_ROWS - count, a.shape[1])])
    return torch.mm(a, b)[:count]


def _head(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden [n, H])``, zero rows added below :data:`MIN_HEAD_ROWS` (batch independence)."""
    count = len(hidden)
    if count < MIN_HEAD_ROWS:
        hidden = torch.cat([hidden, hidden.new_zeros(MIN_HEAD_ROWS - count, hidden.shape[1])])
    return head(hidden)[:count]


class PromptedDecoding:
    """Rows decoding after their prompts, one token per row per :meth:`step`; the tokens drawn so far keep their keys
    and values in per-layer buffers ``[rows, steps, kv heads, D]`` (written in place, never concatenated)."""

    def __init__(self, lm: PromptedLM, prompts: list[Prompt], steps: int):
        self.lm, self.prompts, self.done = lm, prompts, 0
        shape = (len(prompts), steps, lm.kv_heads, lm.head_dim)
        dtype = lm.head.weight.dtype
        layers = len(lm.base.layers)
        self.keys = [torch.empty(shape, dtype=dtype, device=lm.device) for _ in range(layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=lm.device) for _ in range(layers)]

    def first(self) -> torch.Tensor:
        """``[rows, V]`` float64 log-probabilities of every row's first token (its prompt's)."""
        return torch.stack([p.log_probs for p in self.prompts]).to(self.lm.device)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the current rows, in order)."""
        order = rows.tolist()
        self.prompts = [self.prompts[i] for i in order]
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens [rows]`` and return the logits of every row's next token ``[rows, V]``."""
        groups: dict[int, list[int]] = {}
        for i, prompt in enumerate(self.prompts):
            groups.setdefault(id(prompt), []).append(i)
        plan = [(self.prompts[members[0]], torch.tensor(members, device=self.lm.device)) for members in groups.values()]
        done = self.done

        def attend(number, q, k, v):
            self.keys[number][:, done], self.values[number][:, done] = k, v
            keys, values = self.keys[number][:, : done + 1], self.values[number][:, : done + 1]
            out = q.new_empty(len(q), self.lm.heads * self.lm.head_dim)
            for prompt, index in plan:
                out[index] = self.lm._mix(number, prompt, q[index, None], keys[index], values[index], None)[:, 0]
            return out

        positions = torch.tensor([len(p.ids) + done for p in self.prompts], device=self.lm.device)
        hidden = self.lm._layers(tokens.to(self.lm.device), positions, attend)
        self.done += 1
        return _head(self.lm.head, hidden)


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

    def decoding(self, prompts: Sequence[Prompt], steps: int) -> PlainDecoding:
        """A decoding of one row per entry of ``prompts`` (whose lengths share one bucketed width)."""
        return PlainDecoding(self, list(prompts))


class PlainDecoding:
    """:class:`PromptedDecoding` through the model's own forward: the prompts' caches left-padded to one width."""

    def __init__(self, lm: PlainLM, prompts: list[Prompt]):
        self.lm, self.prompts = lm, prompts
        width = bucket(max(len(p.ids) for p in prompts))
        lengths = torch.tensor([len(p.ids) for p in prompts], device=lm.device)
        self.cache = kv_cache_rows([p.cache for p in prompts], width)
        self.mask = (torch.arange(width, device=lm.device)[None] >= width - lengths[:, None]).long()
        self.positions = lengths[:, None] - 1

    def first(self) -> torch.Tensor:
        return torch.stack([p.log_probs for p in self.prompts]).to(self.lm.device)

    def keep(self, rows: torch.Tensor) -> None:
        self.prompts = [self.prompts[i] for i in rows.tolist()]
        self.mask, self.positions = self.mask[rows], self.positions[rows]
        self.cache.reorder_cache(rows)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        self.positions = self.positions + 1
        out = self.lm.model(input_ids=tokens[:, None].to(self.lm.device), attention_mask=self.mask,
                            position_ids=self.positions, **kv_cache_argument(self.lm.model, self.cache))
        self.cache = kv_cache_of(out)
        return out.logits[:, -1]
