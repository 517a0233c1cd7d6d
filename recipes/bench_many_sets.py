"""Benchmark: many keyword sets in one run (``generate --input``) against one set at a time, side by side.

Loads SmolLM2 + the MiniLM MLM once, then writes sentences for the first ``--sets`` distinct CommonGen dev concept
sets (a) one set at a time (``KeywordGenerator.generate``), (b) all sets in one MH population
(``KeywordGenerator.generate_many``: every forward pass shared, ``--batch-size`` chains in flight). Same seed and
preset (``--preset``, default: the default preset, LM drafts included; ``--steps``/``--chains``/``--drafts``
override it); model loading excluded, every run from an empty cache of prompts and tokens. Prints wall times, sets
per second, the ratio, and whether (b) gave the very same sentences as (a) (it should: each set draws from its own
generator, and rows are padded to widths fixed by their own length). ``--repeats N`` alternates (a) and (b) N times
and reports the medians and every run, for a machine whose speed drifts between runs.

    python recipes/bench_many_sets.py [--sets 8] [--preset default] [--steps N] [--batch-size 64] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from textdiff.keywords import KeywordGenerator
from textdiff.keywords.presets import PRESETS, preset
from textdiff.models import load_lm, load_mlm

DATA = Path(__file__).resolve().parents[1] / "data" / "commongen" / "commongen.dev.src_alpha.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=8)
    parser.add_argument("--preset", choices=list(PRESETS), default="default")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--chains", type=int, default=None)
    parser.add_argument("--drafts", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two runs this many times")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    sets = list(dict.fromkeys(line.strip() for line in DATA.read_text().splitlines()))[: args.sets]
    lm, lm_tok = load_lm(None, device=args.device)
    mlm, mlm_tok = load_mlm(None, device=args.device)
    generator = KeywordGenerator(lm, lm_tok, mlm, mlm_tok)
    options = dict(seed=args.seed, inflect=True,
                   **preset(args.preset).options(steps=args.steps, chains=args.chains, drafts=args.drafts))
    generator.generate(sets[0], steps=2, chains=2, drafts=1, seed=0)  # warm-up
    one_by_one, batched = [], []
    for _ in range(args.repeats):
        generator.scorer.clear()  # each run starts with no prompt or token computed
        start = time.perf_counter()
        alone = [generator.generate(keywords, 1, **options) for keywords in sets]
        one_by_one.append(time.perf_counter() - start)
        generator.scorer.clear()
        start = time.perf_counter()
        together = generator.generate_many(sets, 1, batch_size=args.batch_size, **options)
        batched.append(time.perf_counter() - start)
    same = [[s.text for s in a] for a in alone] == [[s.text for s in t] for t in together]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {len(sets)} CommonGen dev sets, "
          f"preset {args.preset}: {options['steps']} steps x {options['chains']} chains, {options['drafts']} drafts "
          f"each, batch {args.batch_size} chains (model loading excluded)")
    first, second = statistics.median(one_by_one), statistics.median(batched)
    print("| run | wall s (median) | every run | sets/s | ratio |\n|---|---|---|---|---|")
    print(f"| one set at a time | {first:.1f} | {' '.join(f'{t:.1f}' for t in one_by_one)} | {len(sets) / first:.3f} | "
          "1.00x |")
    print(f"| all sets in one population | {second:.1f} | {' '.join(f'{t:.1f}' for t in batched)} | "
          f"{len(sets) / second:.3f} | {first / second:.2f}x |")
    print(f"same sentences: {same}")
    for keywords, result in zip(sets, together):
        print(f"  {keywords:32s} {result[0].text if isinstance(result, list) else result}")


if __name__ == "__main__":
    main()
