"""Benchmark: CPU thread count of ``textdiff generate`` on an idle and on a busy machine, side by side.

A 2-core machine shared with other jobs was measured at 10 min 57 s with 2 intra-op threads against 1 min 3 s with
1 (same output): threads that outnumber the free cores wait on each other. The CLI therefore defaults to the cores the
load average leaves free (``textdiff.cli.common.default_threads``). This recipe runs the same seeded command with
``--threads 1``, ``--threads <cores>`` and the default, first on the machine as it is, then with ``--busy N``
processes spinning on the CPU, and prints wall times, ratios and whether the outputs agree.

    python recipes/bench_threads.py [--keywords "dog frisbee catch"] [--steps 40] [--busy 1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time


def spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def run(keywords: str, steps: int, threads: int | None) -> tuple[float, str]:
    command = [sys.executable, "-m", "textdiff", "generate", "-k", keywords, "--steps", str(steps), "--seed", "0",
               "--json"] + ([] if threads is None else ["--threads", str(threads)])
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keywords", default="dog frisbee catch")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--busy", type=int, default=1, help="spinning processes for the busy-machine rows")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    run(args.keywords, 2, 1)  # warm-up: the SmolLM2 cache and the file cache
    print(f"cores {cores}, load before {os.getloadavg()[0]:.2f}; `textdiff generate -k {args.keywords!r} "
          f"--steps {args.steps} --seed 0` (model loading included)")
    print("| machine | threads | wall s | vs 1 thread | same output as 1 thread |\n|---|---|---|---|---|")
    for busy in (0, args.busy):
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(busy)]
        for p in spinners:
            p.start()
        time.sleep(2 if busy else 0)
        base_time, base_out = run(args.keywords, args.steps, 1)
        for threads in (1, cores, None):
            wall, out = (base_time, base_out) if threads == 1 else run(args.keywords, args.steps, threads)
            label = "default" if threads is None else str(threads)
            texts = [line.split('"text": ')[1].split('",')[0] for line in out.splitlines() if line]
            base = [line.split('"text": ')[1].split('",')[0] for line in base_out.splitlines() if line]
            print(f"| {'busy (' + str(busy) + ' spinning)' if busy else 'as is'} | {label} | {wall:.1f} | "
                  f"{wall / base_time:.2f}x | {texts == base} |")
        stop.set()
        for p in spinners:
            p.join()


if __name__ == "__main__":
    main()
