"""Keyword sentences by the reverse deletion process (the ``diffusion`` method;
docs/deletion.md#conditioning-on-keywords).

The chain starts from ``x_{t*}`` = the keywords' pieces in some order, all protected, with ``t*`` solving
``α(t*) = m / expected_length`` (``m`` keyword tokens), and grows a sentence around them by insertions. Keywords are
never removed and stay whole words; the law sampled is the length-tilted ``p(x0 | x_{t*} = keywords)``, not
``p(x0 | keywords ⊂ x0)``. Samples are reranked by the token head's mean pseudo-log-likelihood (a heuristic).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import torch

from textdiff import checks
from textdiff.keywords.parse import detokenize, parse_keywords
from textdiff.keywords.result import Sentence
from textdiff.padding import pad
from textdiff.rng import make_generator
from textdiff.udm.deletion import decode, predictor_for, process_for, pseudo_log_likelihood, sample_delete
from textdiff.udm.process import Batch, X0Draw
from textdiff.udm.sampler import LogitsHook

RERANKS = ("pll", "none")


def keyword_orders(keywords: Sequence[str], orders: str | int, generator: torch.Generator) -> list[tuple[str, ...]]:
    """``"given"``: the given order; ``"all"``: every permutation; an int ``k``: the given order + ``k − 1`` random
    distinct other permutations (all of them when there are fewer)."""
    if orders == "given":
        return [tuple(keywords)]
    every = list(itertools.permutations(keywords))
    if orders == "all":
        return every
    if isinstance(orders, bool) or not isinstance(orders, int) or orders < 1:
        raise ValueError(f"orders must be 'given', 'all' or an integer >= 1, got {orders!r}")
    if orders >= len(every):
        return every
    rest = torch.randperm(len(every) - 1, generator=generator, device=generator.device).tolist()
    return [tuple(keywords)] + [every[1 + i] for i in rest[: orders - 1]]


def keyword_pieces(tokenizer, word: str) -> list[int]:
    """The word's pieces; ``ValueError`` naming it unless they decode back to it (up to letter case)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    written = tokenizer.decode(ids).replace(" ", "") if ids and tokenizer.unk_token_id not in ids else None
    if written is None or written.lower() != word.replace(" ", "").lower():
        became = "" if written is None else f" (it would be written {written!r})"
        raise ValueError(f"keyword {word!r} cannot be written exactly by the insertion model's tokenizer{became}")
    return ids


def keyword_start(tokenizer, orders: Sequence[Sequence[str]], copies: int, max_length: int) -> Batch:
    """``x_t`` = the keywords' pieces in each order (``copies`` rows per order), all protected."""
    rows = []
    for order in orders:
        pieces = [i for word in order for i in keyword_pieces(tokenizer, word)]
        if len(pieces) > max_length:
            raise ValueError(f"keywords take {len(pieces)} tokens, more than max_length={max_length}")
        rows += [pieces] * copies
    ids, mask = pad(rows, 0)
    return Batch(ids, mask, mask.clone())


def generate_from_keywords(
    model,
    tokenizer,
    keywords: str | Iterable[str],
    n: int = 1,
    *,
    orders: str | int = 6,
    samples_per_order: int = 4,
    expected_length: int | None = None,
    steps: int = 12,
    fill_mode: str = "iterative",
    draw: X0Draw | None = None,
    rerank: str = "pll",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    logits_hooks: Sequence[LogitsHook] = (),
) -> list[Sentence]:
    """``n`` distinct sentences containing every keyword, best first (see the module docstring)."""
    words = parse_keywords(keywords)
    checks.positive_int("n", n)
    checks.positive_int("samples_per_order", samples_per_order)
    checks.one_of("rerank", rerank, RERANKS)
    process = process_for(model, tokenizer)
    device = next(model.parameters()).device
    gen = make_generator(seed, generator, device)
    chosen = keyword_orders(words, orders, gen)
    start = keyword_start(tokenizer, chosen, samples_per_order, process.max_length).to(device)
    m = int(start.lengths[0])
    target = max(14, 2 * m) if expected_length is None else expected_length
    if isinstance(target, bool) or not isinstance(target, int) or target < m or target > process.max_length:
        raise ValueError(f"expected_length must be an integer in [{m}, max_length={process.max_length}], "
                         f"got {target!r}")
    t_star = float(process.time_for_survival(torch.tensor(min(m / target, 0.95))))
    out = sample_delete(predictor_for(model, tokenizer, fill_mode), process, start=start, steps=steps, t_start=t_star,
                        draw=draw, generator=gen, progress=progress, logits_hooks=logits_hooks)
    rows = len(out.ids)
    scores = (pseudo_log_likelihood(model, out).cpu() if rerank == "pll"
              else -torch.arange(rows, dtype=torch.float64))
    texts = [detokenize(text) for text in decode(tokenizer, out)]
    results, seen = [], set()
    for row in torch.argsort(scores, descending=True).tolist():
        if texts[row] not in seen:
            seen.add(texts[row])
            results.append(Sentence(texts[row], list(chosen[row // samples_per_order]), "diffusion",
                                    float(scores[row]), row))
    return results[:n]
