"""A causal LM run as short rows after long prompts: the keyword sentences' scoring and drafting
(docs/mcmc.md#rows-after-prompts).

Every row the keyword target scores, and every draft it decodes, follows its keyword set's instruction prompt (about
150 tokens) with a dozen tokens of its own. A prompt runs once (:meth:`prompt`); what a row needs of it is its keys
and values in every layer and the distribution of the token after it (a :class:`Prompt`). Two engines share one
interface, ``prompt(ids)``, ``log_probs(rows, prompts)`` and ``next_log_probs(rows, prompts)``; drafts decode after
the prompts of either through :class:`PlainDecoding`:

* :class:`PromptedLM`, for models with the Llama layout (Llama, Mistral, Qwen2, SmolLM2), checked once per model
  against the plain forward; the default on CPU. A prompt's keys and values are stored once, ``[kv heads, P, head
  dim]`` per layer; each token attends to them and to its own row apart, the two softmaxes merged exactly by their
  maxima and sums: over the prompt, the queries of all tokens after one prompt (the grouped query heads folded into the
  rows) meet its keys in one product per key-value head, with no per-row copy and no repeat per query head; over the
  row, its earlier tokens. The linear layers run on the rows' real tokens packed end to end (no padding), and every
  token after a prompt is computed once and kept in a :class:`~textdiff.mcmc.token_tree.TokenTree`
  (docs/mcmc.md#a-tree-of-scored-tokens): a row pays only for the tokens no earlier row had.
* :class:`PlainLM`, any other Hugging Face causal LM, and every model on CUDA: the model's own forward on a KV cache
  of the prompt, rows grouped by prompt width and row width (:func:`textdiff.compat.kv_cache_rows`).

In both, a row's numbers depend on its own tokens and prompt only, never on what shares its call or what was kept
from earlier calls (on CPU with one thread, where a matrix product gives a row the same bits for any number of rows from
:data:`~textdiff.mcmc.positions.MIN_HEAD_ROWS` up).
"""

from __future__ import annotations

import copy
import itertools
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from textdiff.compat import kv_cache_argument, kv_cache_of, kv_cache_rows
from textdiff.mcmc.positions import at_least_rows, logits_at, zero_rows_to
from textdiff.mcmc.token_tree import TokenTree
from textdiff.padding import bucket, by_width, pad

_MATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> whether PromptedLM reproduces it
#: nodes a :class:`PromptedLM` keeps (SmolLM2-135M: 48 KB each in float32, 8192 take 400 MB)
CACHED_TOKENS = 8192
#: rows of the output head per product when only its log-sum-exp is kept (a block of logits stays in the cache)
HEAD_ROWS = 64


@dataclass(frozen=True, eq=False)
class Prompt:
    """A prompt run once: its ids, ``log p(· | prompt)`` ``[V]`` (float64, CPU) and the model's state after it: its KV
    cache (both engines; :class:`PlainDecoding` decodes on it) and, for :class:`PromptedLM`, the same keys and values
    per layer as ``[kv heads, P, head dim]`` (views of the cache's)."""

    ids: tuple[int, ...]
    log_probs: torch.Tensor
    keys: tuple = ()
    values: tuple = ()
    cache: object = None


def prompted_engine(model, cached_tokens: int = CACHED_TOKENS) -> PromptedLM | PlainLM:
    """The engine for ``model``: on CPU :class:`PromptedLM` when the model has the Llama layout and reproduces its own
    logits (within 1e-4 of their largest magnitude in float32; checked once per model), else :class:`PlainLM`. On CUDA
    the model's own forward stays, with its fused attention kernels, until the packed path (a few small products per
    prompt and layer) has been timed there (docs/mcmc.md#rows-after-prompts)."""
    if next(model.parameters()).device.type != "cpu" or not PromptedLM.has_layout(model):
        return PlainLM(model)
    if model not in _MATCHES:
        _MATCHES[model] = PromptedLM(model).matches_model()
    return PromptedLM(model, cached_tokens) if _MATCHES[model] else PlainLM(model)


def row_log_probs(engine: PromptedLM | PlainLM, rows: Sequence[Sequence[int]], prompts: Sequence[Prompt],
                  max_tokens: int, skip: Sequence[int] | None = None) -> torch.Tensor:
    """``[len(rows)]`` float64: ``Σ_{j ≥ skip[i]} log p(rows[i][j] | prompts[i], rows[i][:j])`` (``skip``: all 0),
    through ``engine.log_probs`` in chunks of at most ``max_tokens`` row tokens (at least one row)."""
    out = torch.zeros(len(rows), dtype=torch.float64)
    start = 0
    while start < len(rows):
        stop, tokens = start + 1, len(rows[start])
        while stop < len(rows) and tokens + len(rows[stop]) <= max_tokens:
            tokens += len(rows[stop])
            stop += 1
        token_lp = engine.log_probs(rows[start:stop], prompts[start:stop])
        owner = torch.tensor([i for i in range(start, stop) for _ in rows[i]], dtype=torch.long)
        if skip is not None:
            kept = torch.tensor([j >= skip[i] for i in range(start, stop) for j in range(len(rows[i]))])
            owner, token_lp = owner[kept], token_lp[kept]
        out.index_add_(0, owner, token_lp)
        start = stop
    return out


def _scored_rows(rows: Sequence[Sequence[int]]) -> bool:
    """Whether there are rows to score; ``ValueError`` if one is empty (each needs a token to score)."""
    if any(len(row) == 0 for row in rows):
        raise ValueError("rows must hold at least one token each")
    return bool(rows)


def _after_prompts(rows: Sequence[Sequence[int]], prompts: Sequence[Prompt], vocab: int) -> torch.Tensor:
    """``[len(rows), vocab]`` float64: the next-token log-probabilities of each row's prompt (a fresh tensor)."""
    return torch.stack([prompt.log_probs for prompt in prompts]) if rows else torch.empty(
        0, vocab, dtype=torch.float64)


def _run_after(model, device: torch.device, ids: Sequence[int], after: Prompt | None):
    """``model``'s forward (with its KV cache) on ``ids``, or on the tokens of ``ids`` past ``after`` on a copy of
    ``after``'s cache (``ValueError`` unless ``after.ids`` is a proper prefix of ``ids``)."""
    if after is None:
        return model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True)
    if len(after.ids) >= len(ids) or tuple(ids[: len(after.ids)]) != after.ids:
        raise ValueError("after must be a prompt whose ids are a proper prefix of ids")
    cache = copy.deepcopy(after.cache)  # the forward extends the cache it is given
    return model(input_ids=torch.tensor([list(ids[len(after.ids):])], device=device), use_cache=True,
                 **kv_cache_argument(model, cache))


def _rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x [T, heads, D]`` (``cos``/``sin`` ``[T, 1, D]``), as the Llama layout does."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


class PromptedLM:
    """Rows after prompts through a Llama-layout decoder, each prompt's keys and values stored once (module docs)."""

    def __init__(self, model, cached_tokens: int = CACHED_TOKENS):
        self.model, self.base, self.head = model, model.base_model, model.get_output_embeddings()
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.device = next(model.parameters()).device
        self.tree = TokenTree(len(self.base.layers), self.kv_heads, self.head_dim, config.hidden_size, cached_tokens,
                              self.device, self.head.weight.dtype)

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
        """Whether the log-probabilities of a row after a prompt equal the model's own forward on the two together."""
        vocab = self.model.config.vocab_size
        ids = [i % vocab for i in range(3, 13)]
        try:
            logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0, 4:-1]
            full = torch.log_softmax(logits.double(), -1)[torch.arange(5), ids[5:]].cpu()
            mine = self.log_probs([ids[5:]], [self.prompt(ids[:5])])
        except Exception:  # a probe: a model that does not run this way keeps its own forward
            return False
        tolerance = 1e-4 if logits.dtype == torch.float32 and self.head.weight.dtype == torch.float32 else 3e-2
        return mine.shape == full.shape and bool((mine - full).abs().max() <= tolerance * full.abs().max().clamp(min=1))

    @torch.no_grad()
    def prompt(self, ids: Sequence[int], after: Prompt | None = None) -> Prompt:
        """Run ``ids`` once (after the prompt ``after``, a prefix of them: only the tokens past it): their keys and
        values per layer and the next-token distribution."""
        out = _run_after(self.base, self.device, ids, after)
        cache = kv_cache_of(out)
        last = self.head(out.last_hidden_state[0, -1:].contiguous())[0]
        keys, values = (tuple(getattr(layer, name)[0] for layer in cache.layers) for name in ("keys", "values"))
        return Prompt(tuple(ids), torch.log_softmax(last.double(), -1).cpu(), keys, values, cache)

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

    def _on_prompt(self, number: int, prompt: Prompt, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of ``q [t, heads, D]`` over the prompt's keys alone: ``(output [t, heads, D], log Σ exp(score)
        [t, heads])``; one fused product per key-value head, its queries the tokens' grouped query heads folded into
        rows (a multiple of 16 of them)."""
        t, groups = len(q), self.heads // self.kv_heads
        flat = q.view(t, self.kv_heads, groups, self.head_dim).transpose(0, 1).reshape(self.kv_heads, -1, self.head_dim)
        keys, values = prompt.keys[number][None], prompt.values[number][None]  # [1, kv, P, D]
        flat = zero_rows_to(flat, bucket(flat.shape[1], 16), 1)  # whole blocks of 16 rows
        out, lse = _attention(flat[None], keys, values, self.base.layers[number].self_attn.scaling)

        def per_token(x: torch.Tensor) -> torch.Tensor:  # [kv, t·g, ...] -> [t, heads, ...]
            return x[:, : t * groups].reshape(self.kv_heads, t, groups, -1).transpose(0, 1).reshape(t, self.heads, -1)

        return per_token(out[0]), per_token(lse[0, ..., None])[..., 0]

    def _on_path(self, number: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of the window's queries ``q [m, 8, heads, D]`` over their paths' ``k``/``v [m, w, kv heads, D]``
        (``allowed [groups · 8, w]``: 0, or ``-inf`` where a query may not look), as in :meth:`_on_prompt` (each
        ``[m, 8, heads, ...]``); one fused product per window and key-value head."""
        m, wq, groups = len(q), q.shape[1], self.heads // self.kv_heads
        q = q.view(m, wq, self.kv_heads, groups, self.head_dim).permute(0, 2, 3, 1, 4)  # [m, kv, g, 8, D]
        q = q.reshape(m, self.kv_heads, groups * wq, self.head_dim)
        k, v = (t.transpose(1, 2) for t in (k, v))  # [m, kv, w, D]
        out, lse = _attention(q, k, v, self.base.layers[number].self_attn.scaling, allowed)

        def per_token(x: torch.Tensor) -> torch.Tensor:  # [m, kv, g·8, ...] -> [m, 8, heads, ...]
            return x.reshape(m, self.kv_heads, groups, wq, -1).permute(0, 3, 1, 2, 4).reshape(m, wq, self.heads, -1)

        return per_token(out), per_token(lse[..., None])[..., 0]

    @torch.no_grad()
    def log_probs(self, rows: Sequence[Sequence[int]], prompts: Sequence[Prompt]) -> torch.Tensor:
        """``[Σ len(rows[i])]`` float64: ``log p(rows[i][j] | prompts[i], rows[i][:j])`` for every token of every row,
        rows in order (each row at least one token).

        Every token but a row's last is a node of the engine's :class:`~textdiff.mcmc.token_tree.TokenTree`, computed
        in the first call that needs it and read back afterwards; a token's log-probability is its parent's hidden
        state times its row of the output head, less the parent's log-sum-exp."""
        if not _scored_rows(rows):
            return torch.empty(0, dtype=torch.float64)
        tree = self.tree
        paths = self._nodes([row[:-1] for row in rows], prompts)
        first = torch.stack([prompt.log_probs[row[0]] for prompt, row in zip(prompts, rows)])
        parents = torch.tensor([node for path in paths for node in path], dtype=torch.long, device=self.device)
        tokens = torch.tensor([t for row in rows for t in row[1:]], dtype=torch.long, device=self.device)
        logit = (tree.hidden[parents].double() * self.head.weight[tokens].double()).sum(-1)
        if self.head.bias is not None:
            logit = logit + self.head.bias[tokens].double()
        rest = (logit - tree.log_norm[parents]).cpu()
        out = torch.empty(len(first) + len(rest), dtype=torch.float64)
        starts = torch.tensor([0, *itertools.accumulate(len(row) for row in rows)][:-1])
        taken = torch.zeros(len(out), dtype=torch.bool)
        taken[starts] = True
        out[taken], out[~taken] = first, rest
        return out

    @torch.no_grad()
    def next_log_probs(self, rows: Sequence[Sequence[int]], prompts: Sequence[Prompt]) -> torch.Tensor:
        """``[len(rows), V]`` float64: ``log p(· | prompts[i], rows[i])``, the distribution of the token after each row
        (an empty row: its prompt's). Every token of a row is a node of the tree; the head runs once more, on each
        row's last node, normalised by the same log-sum-exp as :meth:`log_probs`."""
        out = _after_prompts(rows, prompts, self.head.out_features)
        paths = self._nodes(rows, prompts)
        ended = [i for i, path in enumerate(paths) if path]
        if ended:
            last = torch.tensor([paths[i][-1] for i in ended], device=self.device)
            logits = self.head(at_least_rows(self.tree.hidden[last]))[: len(ended)]
            out[ended] = (logits.double() - self.tree.log_norm[last][:, None]).cpu()
        return out

    def clear(self) -> None:
        """Forget every token computed (scores do not change)."""
        self.tree.clear()

    def _nodes(self, rows: Sequence[Sequence[int]], prompts: Sequence[Prompt]) -> list[list[int]]:
        """The tree's node of every token of every row (row ``i`` after ``prompts[i]``), computing those it lacks; a
        call that fails forgets the nodes it made."""
        tree = self.tree
        paths, made = tree.insert(rows, [tree.root(p.ids) for p in prompts])
        try:
            if made:
                self._compute(made, paths, rows, prompts)
        except BaseException:
            tree.discard([node for node, *_ in made])
            raise
        tree.trim()
        return paths

    def _compute(self, made: list[tuple[int, int, int]], paths: list[list[int]], rows: Sequence[Sequence[int]],
                 prompts: Sequence[Prompt]) -> None:
        """Fill the ``made`` nodes ``(node, row, depth)``: keys and values per layer, final hidden state, log-sum-exp.

        Nodes run packed prompt by prompt; each attends to its prompt and to its own path apart, the two softmaxes
        merged exactly by their maxima and sums. Over the path, a node at depth ``d`` is one of the 8 queries of the
        window of depths ``[b − 8, b)``, ``b = d + 1`` rounded up to a multiple of 8, against the ``b`` first nodes of
        the path of the row that made it: a shape fixed by the node, so its bits never depend on its call."""
        tree, device = self.tree, self.device
        rank: dict[int, int] = {}
        for prompt in prompts:
            rank.setdefault(id(prompt), len(rank))
        made = sorted(made, key=lambda m: rank[id(prompts[m[1]])])  # packed prompt by prompt
        slots = torch.tensor([node for node, _, _ in made], device=device)
        tokens = torch.tensor([rows[i][d] for _, i, d in made], device=device)
        positions = torch.tensor([len(prompts[i].ids) + d for _, i, d in made], device=device)
        prompt_plan, first = [], 0
        for _, group in itertools.groupby(range(len(made)), key=lambda n: rank[id(prompts[made[n][1]])]):
            last = first + len(list(group))
            prompt_plan.append((prompts[made[first][1]], first, last))
            first = last
        windows: dict[int, dict[int, list[int]]] = {}  # width -> made-by row -> its 8 query places (len(made): none)
        for n, (_, i, d) in enumerate(made):
            width = bucket(d + 1)
            windows.setdefault(width, {}).setdefault(i, [len(made)] * 8)[d - width + 8] = n
        path_plan = []
        for width, owners in windows.items():
            keys = torch.tensor([(paths[i] + [0] * width)[:width] for i in owners], device=device)  # [m, width]
            queries = torch.tensor(list(owners.values()), device=device)  # [m, 8]
            column = torch.arange(width, device=device)
            allowed = torch.zeros(8, width, device=device).masked_fill(column[None] > column[width - 8:, None],
                                                                        float("-inf"))  # [8, width]: additive
            allowed = allowed.repeat(self.heads // self.kv_heads, 1)  # [g · 8, width]: the queries' order
            path_plan.append((keys, queries, queries < len(made), allowed))

        def attend(number, q, k, v):
            tree.keys[number][slots], tree.values[number][slots] = k, v
            on_prompt = [torch.cat(parts).float() for parts in zip(
                *(self._on_prompt(number, prompt, q[first:last]) for prompt, first, last in prompt_plan))]
            on_path = [q.new_empty(shape, dtype=torch.float32) for shape in (q.shape, q.shape[:2])]
            q = torch.cat([q, q.new_zeros(1, *q.shape[1:])])  # query place len(made): zeros, its output unused
            for keys, queries, real, allowed in path_plan:
                parts = self._on_path(number, q[queries], tree.keys[number][keys], tree.values[number][keys], allowed)
                for part, value in zip(on_path, parts):
                    part[queries[real]] = value[real].float()
            (out_p, lse_p), (out_r, lse_r) = on_prompt, on_path
            top = torch.maximum(lse_p, lse_r)
            scale_p, scale_r = _exp_per_value(lse_p - top), _exp_per_value(lse_r - top)
            mixed = (out_p * scale_p[..., None] + out_r * scale_r[..., None]) / (scale_p + scale_r)[..., None]
            return mixed.to(q.dtype).flatten(1)

        hidden = self._layers(tokens, positions, attend)
        tree.hidden[slots] = hidden
        for block, block_slots in zip(hidden.split(HEAD_ROWS), slots.split(HEAD_ROWS)):  # for the cache's sake
            logits = self.head(at_least_rows(block))[: len(block)]
            tree.log_norm[block_slots] = torch.logsumexp(logits.float(), -1).double()


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax(s) v [B, H, L, D], log Σ exp(s) [B, H, L])`` with ``s = q kᵀ · scale + mask`` for ``q [B, H, L, D]``,
    ``k``/``v [B, H, S, D]`` and an additive ``mask [L, S]``: the CPU's fused attention kernel. It splits the queries
    into blocks of 32 to 256 rows, and a row's bits depend on nothing else as long as no block holds fewer than 3
    rows: here ``L`` is a multiple of 16 (over a prompt) or fixed by the model (a window's ``8 · groups`` queries;
    docs/mcmc.md#rows-after-prompts)."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask,
                                                                       scale=scale)


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

    def clear(self) -> None:
        """Nothing to forget: this engine keeps no token."""

    @torch.no_grad()
    def prompt(self, ids: Sequence[int], after: Prompt | None = None) -> Prompt:
        """Run ``ids`` once (after the prompt ``after``, as :meth:`PromptedLM.prompt`): their KV cache and the
        next-token distribution."""
        out = _run_after(self.model, self.device, ids, after)
        return Prompt(tuple(ids), torch.log_softmax(out.logits[0, -1].double(), -1).cpu(), cache=kv_cache_of(out))

    @torch.no_grad()
    def log_probs(self, rows: Sequence[Sequence[int]], prompts: Sequence[Prompt]) -> torch.Tensor:
        """:meth:`PromptedLM.log_probs`: the logits after every token but a row's last, less their log-sum-exp."""
        if not _scored_rows(rows):
            return torch.empty(0, dtype=torch.float64)
        out = [prompt.log_probs[row[:1]] for prompt, row in zip(prompts, rows)]
        for chunk, logits in self._forwards(rows, prompts, minimum=2, last=False):
            targets = torch.tensor([t for i in chunk for t in rows[i][1:]], device=logits.device)
            logits = logits.float()
            lp = logits.gather(-1, targets[:, None])[:, 0].double() - torch.logsumexp(logits, -1).double()
            for i, piece in zip(chunk, lp.cpu().split([len(rows[i]) - 1 for i in chunk])):
                out[i] = torch.cat([out[i], piece])
        return torch.cat(out)

    @torch.no_grad()
    def next_log_probs(self, rows: Sequence[Sequence[int]], prompts: Sequence[Prompt]) -> torch.Tensor:
        """:meth:`PromptedLM.next_log_probs`: the logits after each row's last token, log-softmaxed."""
        out = _after_prompts(rows, prompts, self.model.config.vocab_size)
        for chunk, logits in self._forwards(rows, prompts, minimum=1, last=True):
            out[chunk] = torch.log_softmax(logits.double(), -1).cpu()
        return out

    def _forwards(self, rows, prompts, minimum: int, last: bool) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Per group of the rows of at least ``minimum`` tokens (one prompt width and one row width, so each row's
        padding is fixed by its own lengths): the rows' indices and ``[n, V]`` logits after every token but each row's
        last (``last``: after its last token only)."""
        groups: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            if len(rows[i]) >= minimum:
                groups.setdefault(bucket(len(prompt.ids)), []).append(i)
        for p_width, members in groups.items():
            for width, chunk in by_width([len(rows[i]) for i in members]):
                chunk = [members[i] for i in chunk]
                yield chunk, self._logits([rows[i] for i in chunk], [prompts[i] for i in chunk], p_width, width, last)

    def _logits(self, rows, prompts, p_width: int, width: int, last: bool) -> torch.Tensor:
        ids, mask = pad(rows, 0, width=width)
        cache = kv_cache_rows([p.cache for p in prompts], p_width)
        lengths = torch.tensor([len(p.ids) for p in prompts])
        seen = torch.arange(p_width)[None] >= p_width - lengths[:, None]  # [n, p_width]: the prompt, left-padded
        attention = torch.cat([seen, mask], 1).long().to(self.device)
        positions = (lengths[:, None] + torch.arange(width)[None]).to(self.device)
        column, ends = torch.arange(width)[None], torch.tensor([len(row) - 1 for row in rows])[:, None]
        where = column == ends if last else column < ends
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
