"""``textdiff sample``: unconditional / prefix-conditioned samples from a discrete diffusion model (UDM loop)."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from textdiff.cli.common import add_device_option, add_seed_option, add_threads_option, default_device
from textdiff.udm import PROCESSES, Trajectory, X0Draw, forbid_tokens, make_process, process_names, reverse_sample
from textdiff.udm.deletion import decode, predictor_for, process_for, sample_delete
from textdiff.udm.sampler import make_template


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="sample text with a discrete diffusion process (masking, replacement, deletion)",
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
    add_device_option(p)
    add_threads_option(p)
    p.set_defaults(func=run)


def text_template(tokenizer, n: int, length: int, prefix: str | None, device: str):
    """``[CLS] prefix … [SEP]`` rows (specials and prefix protected) of ``length`` content tokens."""
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    head = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
    tail = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
    if len(prefix_ids) >= length:
        raise ValueError(f"--prefix has {len(prefix_ids)} tokens; --length must exceed it, got {length}")
    x = make_template(n, length + len(head) + len(tail), head + prefix_ids, device)
    if tail:
        x.ids[:, -1] = tail[0]
        x.protected[:, -1] = True
    return x


#: options of ``textdiff sample`` that go to the processes whose constructor takes them, with their defaults
PROCESS_OPTIONS = {"reveal": "random", "kernel": "one_token"}


def process_options(process_class, args: argparse.Namespace) -> dict:
    """The process-specific options the chosen process accepts; ``ValueError`` for one set that it does not."""
    accepted = inspect.signature(process_class.__init__).parameters
    options = {name: getattr(args, name) for name in PROCESS_OPTIONS if name in accepted}
    for name, default in PROCESS_OPTIONS.items():
        if name not in accepted and getattr(args, name) != default:
            raise ValueError(f"--{name} does not apply to --process {args.process}")
    return options


def run(args: argparse.Namespace) -> int:
    if args.length < 1:
        raise ValueError(f"--length must be >= 1, got {args.length}")
    if args.num_samples < 1:
        raise ValueError(f"-n must be >= 1, got {args.num_samples}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    steps = args.steps
    device = args.device or default_device()
    draw = X0Draw(args.x0_mode, args.temperature, args.top_k, args.top_p)
    trajectory = Trajectory() if args.trajectory else None
    from textdiff.models.hub import load_denoiser, load_insertion  # transformers loads with the verb, not --help

    process_class = PROCESSES[args.process]
    schedule = args.schedule or process_class.default_schedule
    if process_class.variable_length:
        model, tokenizer = load_insertion(args.model, device)
        process = process_for(model, tokenizer, schedule, args.corrector or "posterior")
        steps = steps or args.length
        out = sample_delete(predictor_for(model, tokenizer), process, args.num_samples, steps=steps, draw=draw,
                            seed=args.seed, trajectory=trajectory, progress=True, device=device)
        texts = decode(tokenizer, out)
    else:
        predictor, tokenizer = load_denoiser(args.model, device, subs=process_class.subs_predictor)
        vocab, mask_id = predictor.model.config.vocab_size, tokenizer.mask_token_id
        options = process_options(process_class, args)
        process = make_process(args.process, mask_id=mask_id, vocab_size=vocab, schedule=schedule,
                               corrector=args.corrector, **options)
        template = text_template(tokenizer, args.num_samples, args.length, args.prefix, device)
        steps = steps or int(template.corruptible.sum(-1).max())
        hooks = [] if args.allow_special else [forbid_tokens(tokenizer.all_special_ids)]
        out = reverse_sample(process, predictor, template, steps, draw=draw, seed=args.seed,
                             cache=False if args.no_cache else "auto", logits_hooks=hooks, trajectory=trajectory,
                             progress=True)
        texts = tokenizer.batch_decode(out.ids, skip_special_tokens=True)
    for text in texts:
        print(text)
    if trajectory is not None:
        page = trajectory.to_html(lambda i: tokenizer.convert_ids_to_tokens(int(i)),
                                  title=f"textdiff sample --process {args.process} --steps {steps}")
        Path(args.trajectory).write_text(page, encoding="utf-8")
    return 0
