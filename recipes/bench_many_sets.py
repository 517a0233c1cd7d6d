"""Benchmark: many keyword sets in one run (``generate --input``) against one set at a time, side by side.

Loads SmolLM2 + the MiniLM MLM once, then writes sentences for the first ``--sets`` distinct CommonGen dev concept
sets (a) one set at a time (``KeywordGenerator.generate``), (b) all sets in one MH population
(``KeywordGenerator.generate_many``: every forward pass shared, ``--batch-size`` chains in flight). Same seed and
preset (``--preset``, default: the default preset, LM drafts included; ``--steps``/``--chains``/``--drafts``
override it); model loading excluded, every run from an empty cache of prompts and tokens. Prints wall times, sets
per second, the ratio, and whether (b) gave the very same sentences as (a) (it should: each set draws from its own
generator, and rows are padded to widths fixed by their own length). ``--repeats N`` alternates (a) and (b) N times
and reports the medians, every run and the ratio of each repeat's back-to-back pair, for a machine whose speed
drifts between runs. ``--scaling 8,16,32`` instead times only (b), for each number of sets in turn (``--repeats``
rounds), to show how sets per second grow with the population.

    python recipes/bench_many_sets.py [--sets 8] [--preset default] [--steps N] [--batch-size 64] [--repeats 1]
    python recipes/bench_many_sets.py --scaling 8,16,32 [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from textdiff.keywords import KeywordGenerator
from textdiff.keywords.presets import PRESETS, preset
from textdiff.models import load_lm, load_mlm

DATA = Path(__file__).resolve().parents[1] / "data" / "commongen" / "commongen.dev.src_alpha.txt"


RUNS = ("one set at a time", "all sets in one population")


def first_sets(count: int) -> list[str]:
    """The first ``count`` distinct CommonGen dev concept sets."""
    return list(dict.fromkeys(line.strip() for line in DATA.read_text().splitlines()))[:count]


def keyword_runs(sets: list[str], options: dict, batch_size: int) -> dict[str, Callable[[KeywordGenerator], list]]:
    """The two ways of writing one sentence per set (:data:`RUNS`): ``KeywordGenerator.generate`` set by set, and
    ``generate_many`` with every set's chains in one population. Each gives per set its sentence texts, or the error
    of a set that could not run."""

    def texts(result) -> list[str] | str:
        return [sentence.text for sentence in result] if isinstance(result, list) else str(result)

    return {RUNS[0]: lambda g: [texts(g.generate(keywords, 1, **options)) for keywords in sets],
            RUNS[1]: lambda g: [texts(r) for r in g.generate_many(sets, 1, batch_size=batch_size, **options)]}


def timed_run(generator: KeywordGenerator, run: Callable[[KeywordGenerator], list]) -> tuple[float, list]:
    """Wall seconds and result of ``run(generator)``, started from an empty cache of prompts and tokens."""
    generator.scorer.clear()
    start = time.perf_counter()
    result = run(generator)
    return time.perf_counter() - start, result


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",")]
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"every count must be >= 1, got {text}")
    return counts


def scaling(generator: KeywordGenerator, sets: list[str], options: dict, batch_size: int, counts: list[int],
            repeats: int) -> None:
    """Wall time and sets per second of the first ``count`` sets in one population, for each count in turn."""
    times: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(repeats):
        for count in counts:
            seconds, _ = timed_run(generator, keyword_runs(sets[:count], options, batch_size)[RUNS[1]])
            times[count].append(seconds)
    print(f"all sets in one population, batch {batch_size} chains (model loading excluded)")
    print("| sets | wall s (median) | every run | sets/s |\n|---|---|---|---|")
    for count, runs in times.items():
        median = statistics.median(runs)
        print(f"| {count} | {median:.1f} | {' '.join(f'{t:.1f}' for t in runs)} | {count / median:.3f} |")


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
    parser.add_argument("--scaling", type=_counts, default=None, metavar="N,N,...",
                        help="time only all sets in one population, for each of these numbers of sets")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    sets = first_sets(max(args.scaling or [args.sets]))
    lm, lm_tok = load_lm(None, device=args.device)
    mlm, mlm_tok = load_mlm(None, device=args.device)
    generator = KeywordGenerator(lm, lm_tok, mlm, mlm_tok)
    options = dict(seed=args.seed, inflect=True,
                   **preset(args.preset).options(steps=args.steps, chains=args.chains, drafts=args.drafts))
    generator.generate(sets[0], steps=2, chains=2, drafts=1, seed=0)  # warm-up
    if args.scaling:
        return scaling(generator, sets, options, args.batch_size, args.scaling, args.repeats)
    runs = keyword_runs(sets, options, args.batch_size)
    times: dict[str, list[float]] = {name: [] for name in runs}
    texts = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            seconds, texts[name] = timed_run(generator, run)
            times[name].append(seconds)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {len(sets)} CommonGen dev sets, "
          f"preset {args.preset}: {options['steps']} steps x {options['chains']} chains, {options['drafts']} drafts "
          f"each, batch {args.batch_size} chains (model loading excluded)")
    first = statistics.median(times[RUNS[0]])
    print("| run | wall s (median) | every run | sets/s | ratio |\n|---|---|---|---|---|")
    for name in RUNS:
        median = statistics.median(times[name])
        print(f"| {name} | {median:.1f} | {' '.join(f'{t:.1f}' for t in times[name])} | {len(sets) / median:.3f} | "
              f"{first / median:.2f}x |")
    if args.repeats > 1:  # each repeat's two runs ran back to back: their ratio does not see the drift between repeats
        paired = [one / together for one, together in zip(times[RUNS[0]], times[RUNS[1]])]
        print(f"ratio per repeat: {' '.join(f'{r:.2f}x' for r in paired)} (median {statistics.median(paired):.2f}x)")
    print(f"same sentences: {texts[RUNS[0]] == texts[RUNS[1]]}")
    for keywords, result in zip(sets, texts[RUNS[1]]):
        print(f"  {keywords:32s} {result[0] if isinstance(result, list) else result}")


if __name__ == "__main__":
    main()
