"""Benchmark: linear weights stored ``[out, in]`` (``nn.Linear``'s own layout) against ``[in, out]``
(``textdiff.models.for_few_rows``, what the CPU loaders hand out), side by side in one run.

(a) Every linear layer of SmolLM2-135M and of the MiniLM MLM in forward order, on ``M`` rows of random activations
for ``M`` in ``--rows``: ms per pass over a model's linears (the weights stream from memory as in a forward) and the
ratio. (b) The keyword generator (default preset) on the first ``--sets`` CommonGen dev sets, one set at a time and
all sets in one population (``generate_many``), with both models in one layout, then in the other, ``--repeats``
times alternating: wall time (model loading excluded, every run from an empty cache), the ratios, and whether the two
layouts gave the same sentences. Both models come from the loaders; the plain layout
is made from them by contiguous copies (same values). The runs are `recipes/bench_many_sets.py`'s.

    python recipes/bench_layout.py [--rows 1 8 16 32 64 128 256] [--sets 4] [--repeats 2] [--skip linears keywords]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from bench_many_sets import RUNS, first_sets, keyword_runs, timed_run  # recipes/ is on sys.path
from torch import nn

from textdiff.keywords import KeywordGenerator
from textdiff.keywords.presets import preset
from textdiff.models import load_lm, load_mlm


def plain_layout(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every parameter contiguous (``nn.Linear``'s ``[out, in]``), shared ones still shared."""
    model = copy.deepcopy(model)
    copies: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if not param.is_contiguous():
                setattr(module, name, copies.setdefault(id(param), nn.Parameter(param.detach().contiguous(),
                                                                                requires_grad=False)))
    return model


def linears_ms(model: nn.Module, rows: int, repeats: int = 5) -> float:
    """Median ms of one pass over ``model``'s linear layers in order, each on ``rows`` rows."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    inputs = {m.in_features: torch.randn(rows, m.in_features) for m in layers}
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for layer in layers:
                layer(inputs[layer.in_features])
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128, 256])
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["linears", "keywords"])
    args = parser.parse_args()
    if args.repeats < 1 or args.sets < 1 or min(args.rows) < 1:
        parser.error("--repeats, --sets and every --rows must be >= 1")
    lm, lm_tok = load_lm(None)
    mlm, mlm_tok = load_mlm(None)
    models = {"few rows": (lm, mlm), "plain": (plain_layout(lm), plain_layout(mlm))}
    print(f"CPU, torch threads {torch.get_num_threads()}; [out, in] = nn.Linear's layout (plain), [in, out] = "
          "for_few_rows")
    if "linears" not in args.skip:
        print("\n| model | rows | [out, in] ms | [in, out] ms | ratio |\n|---|---|---|---|---|")
        for index, name in enumerate(("SmolLM2-135M", "MiniLM MLM")):
            for rows in args.rows:
                plain = linears_ms(models["plain"][index], rows)
                few = linears_ms(models["few rows"][index], rows)
                print(f"| {name} | {rows} | {plain:.1f} | {few:.1f} | {plain / few:.2f}x |")
    if "keywords" in args.skip:
        return
    sets = first_sets(args.sets)
    options = dict(seed=args.seed, inflect=True, **preset("default").options())
    generators = {name: KeywordGenerator(lm_model, lm_tok, mlm_model, mlm_tok)
                  for name, (lm_model, mlm_model) in models.items()}
    runs = keyword_runs(sets, options, batch_size=64)
    times = {(run, name): [] for run in RUNS for name in generators}
    texts = {}
    for generator in generators.values():
        generator.generate(sets[0], steps=2, chains=2, drafts=1, seed=0)  # warm-up
    for _ in range(args.repeats):
        for run, name in times:
            seconds, texts[run, name] = timed_run(generators[name], runs[run])
            times[run, name].append(seconds)
    print(f"\nkeyword generator, default preset, {len(sets)} CommonGen dev sets (model loading excluded)")
    print("| run | [out, in] s (median; every run) | [in, out] s | ratio | same sentences |\n|---|---|---|---|---|")
    for run in RUNS:
        plain, few = times[run, "plain"], times[run, "few rows"]
        print(f"| {run} | {statistics.median(plain):.1f} ({' '.join(f'{t:.1f}' for t in plain)}) | "
              f"{statistics.median(few):.1f} ({' '.join(f'{t:.1f}' for t in few)}) | "
              f"{statistics.median(plain) / statistics.median(few):.2f}x | "
              f"{texts[run, 'plain'] == texts[run, 'few rows']} |")
    for keywords, result in zip(sets, texts[RUNS[1], "few rows"]):
        print(f"  {keywords:32s} {result[0] if isinstance(result, list) else result}")


if __name__ == "__main__":
    main()
