"""Benchmark: the output head on every position against the head only where logits are used.

Side by side in one run on the shipped MiniLM MLM (or ``--model``): ``--chains`` chains of ``--length`` tokens, one
redraw per chain per step. (a) the plain forward (``model(...).logits[rows, positions]``, the head on all positions);
(b) ``textdiff.mcmc.positions.logits_at`` (encoder on the sequence, head at one position per chain), which
``gibbs_sample`` and the MLM proposal use. Prints ms per step, steps/s and the ratio, and checks that both give the
same logits. Then the masking sampler's x0 predictor (``MaskedLMPredictor``, SUBS) with a fraction
``--mask-rate`` of the positions masked: (c) the head on every position, then SUBS and carry-over; (d) the head at
the masked positions only (what ``MaskedLMPredictor`` does).

    python recipes/bench_gibbs.py [--chains 64] [--length 32] [--steps 10] [--mask-rate 0.5] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from textdiff.mcmc.positions import logits_at
from textdiff.models import MaskedLMPredictor, load_mlm
from textdiff.support import subs
from textdiff.udm import Batch


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
    parser.add_argument("--mask-rate", type=float, default=0.5)
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

    masked = torch.rand(ids.shape, generator=generator).to(args.device) < args.mask_rate
    masked[:, [0, -1]] = False
    x = Batch(ids.masked_fill(masked, tokenizer.mask_token_id), mask.bool())
    masked = x.ids == tokenizer.mask_token_id
    predictor = MaskedLMPredictor(model, tokenizer.mask_token_id)
    t = torch.ones(args.chains, dtype=torch.float64)

    def every_position() -> torch.Tensor:
        logits = subs(model(input_ids=x.ids, attention_mask=mask).logits.float(), tokenizer.mask_token_id)
        carry = torch.full_like(logits, -torch.inf).scatter(-1, x.ids[..., None], 0.0)
        return torch.where(masked[..., None], logits, carry)

    whole = timed(every_position, args.steps, args.device)
    only = timed(lambda: predictor(x, t), args.steps, args.device)
    close = torch.allclose(every_position(), predictor(x, t), atol=1e-4)
    print(f"\n| masking x0 predictor, {100 * masked.float().mean():.0f} % masked | ms per call | calls/s | ratio |")
    print("|---|---|---|---|")
    print(f"| head on every position | {1000 * whole:.1f} | {1 / whole:.2f} | 1.00x |")
    print(f"| head at masked positions | {1000 * only:.1f} | {1 / only:.2f} | {whole / only:.2f}x |")
    print(f"same logits (atol 1e-4): {close}")


if __name__ == "__main__":
    main()
