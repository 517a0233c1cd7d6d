"""Timings for the deletion process, side by side in one run (2-core CPU or GPU), printed with ratios.

1. EXPAND + compaction on padded tensors (cumsum + scatter) vs a per-row Python reference, same random batch.
2. One reverse chain from the empty sequence with the shipped insertion model: ``oneshot`` vs ``iterative`` fill.

    OMP_NUM_THREADS=1 python recipes/bench_deletion.py --rows 4096 --samples 32
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from textdiff.models import load_insertion
from textdiff.udm.deletion import compact, expand, sample_sentences

MASK, PAD = 103, 0


def python_expand_compact(rows: list[list[int]], counts: list[list[int]], keeps: list[list[bool]]) -> list[list[int]]:
    out = []
    for row, cnt, keep in zip(rows, counts, keeps):
        grown = []
        for j, n in enumerate(cnt):
            grown += [MASK] * n
            if j < len(row):
                grown.append(row[j])
        out.append([w for w, k in zip(grown, keep) if k])
    return out


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--samples", type=int, default=32, help="sentences per reverse-chain timing")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, args.length + 1, (args.rows,), generator=g)
    ids = torch.randint(1000, 2000, (args.rows, args.length), generator=g)
    mask = torch.arange(args.length)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~mask, PAD)
    counts = torch.randint(0, 3, (args.rows, args.length + 1), generator=g)
    counts = counts.masked_fill(torch.arange(args.length + 1)[None, :] > lengths[:, None], 0)
    keep_full = torch.rand(args.rows, 3 * args.length + 3, generator=g) < 0.5
    rows = [r[: int(n)] for r, n in zip(ids.tolist(), lengths.tolist())]
    count_rows = [c[: int(n) + 1] for c, n in zip(counts.tolist(), lengths.tolist())]
    keep_rows = keep_full.tolist()
    dev = torch.device(args.device)
    ids_d, mask_d, counts_d = ids.to(dev), mask.to(dev), counts.to(dev)

    def batched():
        grown = expand(ids_d, mask_d, counts_d, MASK, PAD)
        compact(grown.ids, grown.attention_mask, keep_full[:, : grown.ids.shape[1]].to(dev), PAD)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t_batched = timed(batched)
    t_python = timed(lambda: python_expand_compact(rows, count_rows, keep_rows))
    print(f"EXPAND+compact, {args.rows} rows x {args.length}: batched {t_batched * 1e3:.1f} ms, "
          f"Python per-row {t_python * 1e3:.1f} ms, ratio {t_python / t_batched:.1f}x")

    model, tokenizer = load_insertion(device=dev)
    times = {}
    for mode in ("oneshot", "iterative"):
        times[mode] = timed(partial(sample_sentences, model, tokenizer, args.samples, steps=args.steps,
                                    fill_mode=mode, seed=0), repeats=1)
        print(f"reverse chain, {args.samples} sentences, {args.steps} steps, fill={mode}: {times[mode]:.2f} s "
              f"({times[mode] / args.samples * 1e3:.0f} ms/sentence)")
    print(f"iterative / oneshot: {times['iterative'] / times['oneshot']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
