"""Benchmark: a Gibbs step with the output head on every position against the head at the resampled position only.

Side by side in one run on the shipped MiniLM MLM (or ``--model``): ``--chains`` chains of ``--length`` tokens, one
redraw per chain per step. (a) the plain forward (``model(...).logits[rows, positions]``, the head on all positions);
(b) ``textdiff.mcmc.positions.logits_at`` (encoder on the sequence, head at one position per chain), which
``gibbs_sample`` and the MLM proposal use. Prints ms per step, steps/s and the ratio, and checks that both give the
same logits.

    python recipes/bench_gibbs.py [--chains 64] [--length 32] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from textdiff.mcmc.positions import logits_at
from textdiff.models import load_mlm


def timed(function, steps: int, device: str) -> float:
    function()  # warm-up (and, for logits_at, the one-time check of the split)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model, tokenizer = load_mlm(args.model, device=args.device)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2000, 9000, (args.chains, args.length + 2), generator=generator).to(args.device)
    mask = torch.ones_like(ids)
    positions = torch.randint(1, args.length + 1, (args.chains,), generator=generator).to(args.device)
    ids[torch.arange(args.chains), positions] = tokenizer.mask_token_id
    rows = torch.arange(args.chains, device=args.device)
    full = timed(lambda: model(input_ids=ids, attention_mask=mask).logits[rows, positions], args.steps, args.device)
    at = timed(lambda: logits_at(model, ids, mask, positions), args.steps, args.device)
    same = torch.equal(model(input_ids=ids, attention_mask=mask).logits[rows, positions],
                       logits_at(model, ids, mask, positions))
    print(f"device {args.device}, threads {torch.get_num_threads()}, {args.chains} chains x {args.length} tokens")
    print("| Gibbs step logits | ms per step | steps/s | ratio |\n|---|---|---|---|")
    print(f"| head on every position | {1000 * full:.1f} | {1 / full:.2f} | 1.00x |")
    print(f"| head at the resampled position | {1000 * at:.1f} | {1 / at:.2f} | {full / at:.2f}x |")
    print(f"identical logits: {same}")


if __name__ == "__main__":
    main()
