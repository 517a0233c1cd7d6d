"""``textdiff sample``: unconditional / prefix-conditioned samples from a discrete diffusion model (UDM loop)."""

from __future__ import annotations

import argparse
from pathlib import Path

from textdiff.cli.common import (
    add_device_option,
    add_dtype_option,
    add_guidance_options,
    add_seed_option,
    add_threads_option,
    default_device,
    guidance_from_args,
)
from textdiff.sampling import sample_texts
from textdiff.udm import Trajectory, X0Draw, process_names

#: the verb's line in ``textdiff --help`` (read without importing this module)
HELP = "sample text with a discrete diffusion process (masking, replacement, deletion)"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help=HELP,
        description="Run the generic UDM reverse loop: start from the prior (all [MASK] for --process mask, uniform "
        "tokens for replace_*, the empty sequence for delete) and denoise with the model's x0 prediction and the "
        "noise-posterior corrector. With the default count schedule and --steps equal to --length one token changes "
        "per step, which is exact "
        "given exact conditionals; fewer steps change several tokens per step (an approximation).",
    )
    p.add_argument("--model", default=None, help="model directory or hub name (default: the shipped MiniLM MLM, "
                   "$TEXTDIFF_MLM; the shipped insertion model, $TEXTDIFF_INSERTION, for delete)")
    p.add_argument("--process", default="mask", choices=process_names(),
                   help="forward process (default: mask)")
    p.add_argument("--schedule", default=None, choices=["linear", "cosine", "loglinear", "count"],
                   help="time schedule; count = Su's form, exactly k of n tokens corrupted, so --steps = --length "
                   "changes one token per step (default: count; linear for delete, which is continuous-time only)")
    p.add_argument("--corrector", default=None, choices=["posterior", "baseline"],
                   help="noise-posterior corrector (default; replace_any defaults to baseline) or the baseline")
    p.add_argument("--length", type=int, default=32, help="tokens per sample, prefix included (default 32)")
    p.add_argument("-n", "--num-samples", type=int, default=8, help="number of samples (default 8)")
    p.add_argument("--steps", type=int, default=None,
                   help="reverse steps (default: T = the number of generated tokens, --length minus the prefix)")
    p.add_argument("--prefix", default=None, help="text kept fixed at the start of every sample")
    add_seed_option(p, default=0)
    p.add_argument("--x0-mode", default="sample", choices=["sample", "argmax"], help="how x̂0 is drawn (default sample)")
    p.add_argument("--temperature", type=float, default=1.0, help="x̂0 temperature (1 = exact; default 1)")
    p.add_argument("--top-k", type=int, default=None, help="restrict x̂0 to the top-k tokens (not exact)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus restriction of x̂0 (not exact)")
    p.add_argument("--reveal", default="random", choices=["random", "confidence"],
                   help="mask: which positions to reveal; confidence = LLaDA heuristic, NOT exact (default random)")
    p.add_argument("--kernel", default="one_token", choices=["one_token", "conditional_bernoulli"],
                   help="replace_diff, count schedule: reverse kernel (docs/udm.md#count-form-reverse-kernels). "
                   "one_token (default): exact one token per "
                   "step with exact marginals; conditional_bernoulli: draws the edited set conditioned on the Hamming "
                   "distance, for several tokens per step (exact only for factorised posteriors)")
    p.add_argument("--allow-special", action="store_true",
                   help="let the model generate special tokens ([SEP], [UNK], ...); by default a logits hook "
                   "forbids them")
    p.add_argument("--no-cache", action="store_true", help="call the network at every step (no caching/skipping)")
    p.add_argument("--trajectory", default=None, help="write the denoising trajectory to this HTML file")
    add_guidance_options(p, diffusion=True)
    add_device_option(p)
    add_dtype_option(p)
    add_threads_option(p)
    p.set_defaults(func=run)


#: options of ``textdiff sample`` that go to the processes whose constructor takes them, with their defaults
PROCESS_OPTIONS = {"reveal": "random", "kernel": "one_token"}


def run(args: argparse.Namespace) -> int:
    device = args.device or default_device()
    draw = X0Draw(args.x0_mode, args.temperature, args.top_k, args.top_p)
    trajectory = Trajectory() if args.trajectory else None
    options = {name: getattr(args, name) for name, default in PROCESS_OPTIONS.items()
               if getattr(args, name) != default}
    texts, tokenizer = sample_texts(
        args.num_samples, length=args.length, process=args.process, model=args.model, steps=args.steps,
        schedule=args.schedule, corrector=args.corrector, prefix=args.prefix,
        guidance=guidance_from_args(args, device), draw=draw, seed=args.seed, cache=not args.no_cache,
        allow_special=args.allow_special, trajectory=trajectory, progress=True, device=device, dtype=args.dtype,
        **options)
    for text in texts:
        print(text)
    if trajectory is not None:
        page = trajectory.to_html(lambda i: tokenizer.convert_ids_to_tokens(int(i)),
                                  title=f"textdiff sample --process {args.process}")
        Path(args.trajectory).write_text(page, encoding="utf-8")
    return 0
