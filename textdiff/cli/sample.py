"""``textdiff sample``: unconditional / prefix-conditioned samples from a discrete diffusion model (UDM loop)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "data" / "models" / "minilm-mlm"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="sample text with a discrete diffusion process (masking, replacement, deletion)",
        description="Run the generic UDM reverse loop: start from the prior (all [MASK] for --process mask, uniform "
        "tokens for replace_*, the empty sequence for delete) and denoise with the model's x0 prediction and the "
        "noise-posterior corrector. With the default count schedule and --steps equal to --length one token changes per step, which is exact "
        "given exact conditionals; fewer steps change several tokens per step (an approximation).",
    )
    p.add_argument("--model", default=None, help=f"model directory (default: {DEFAULT_MODEL} for mask/replace_*; "
                   "the shipped insertion model for delete)")
    p.add_argument("--process", default="mask", choices=["mask", "replace_any", "replace_diff", "delete"],
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
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--x0-mode", default="sample", choices=["sample", "argmax"], help="how x̂0 is drawn (default sample)")
    p.add_argument("--temperature", type=float, default=1.0, help="x̂0 temperature (1 = exact; default 1)")
    p.add_argument("--top-k", type=int, default=None, help="restrict x̂0 to the top-k tokens (not exact)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus restriction of x̂0 (not exact)")
    p.add_argument("--reveal", default="random", choices=["random", "confidence"],
                   help="mask: which positions to reveal; confidence = LLaDA heuristic, NOT exact (default random)")
    p.add_argument("--kernel", default="one_token", choices=["one_token", "conditional_bernoulli"],
                   help="replace_diff, count schedule: reverse kernel (D1). one_token (default): exact one token per "
                   "step with exact marginals; conditional_bernoulli: draws the edited set conditioned on the Hamming "
                   "distance, for several tokens per step (exact only for factorised posteriors)")
    p.add_argument("--allow-special", action="store_true",
                   help="let the model generate special tokens ([SEP], [UNK], ...); by default a logits hook forbids them")
    p.add_argument("--no-cache", action="store_true", help="call the network at every step (no caching/skipping)")
    p.add_argument("--trajectory", default=None, help="write the denoising trajectory to this HTML file")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)


def build_predictor(model_dir: Path, device: str, subs: bool = True):
    """``(predictor, tokenizer, vocab_size, mask_id)`` for a textdiff denoiser or any HF masked LM directory."""
    import json

    from transformers import AutoTokenizer

    from textdiff.models.denoiser import DenoiserModel, DenoiserPredictor, MaskedLMPredictor, load_masked_lm

    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no model at {model_dir} (expected config.json + model.safetensors)")
    if json.loads((model_dir / "config.json").read_text()).get("model_type") == "textdiff_denoiser":
        model = DenoiserModel.from_pretrained(model_dir).float().to(device).eval()
        if model.config.causal:
            raise ValueError(f"{model_dir} is an autoregressive baseline, not a diffusion denoiser")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return DenoiserPredictor(model), tokenizer, model.config.vocab_size, model.config.mask_token_id
    model, tokenizer = load_masked_lm(model_dir, device)
    if tokenizer.mask_token_id is None:
        raise ValueError(f"the tokenizer of {model_dir} has no [MASK] token")
    return MaskedLMPredictor(model, tokenizer.mask_token_id, subs), tokenizer, model.config.vocab_size, tokenizer.mask_token_id


def text_template(tokenizer, n: int, length: int, prefix: str | None, device: str):
    """``[CLS] prefix … [SEP]`` rows (specials and prefix protected) of ``length`` content tokens."""
    import torch

    from textdiff.udm.sampler import make_template

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


def run(args: argparse.Namespace) -> int:
    import torch

    from textdiff.udm.process import X0Draw
    from textdiff.udm.registry import make_process
    from textdiff.udm.sampler import Trajectory, forbid_tokens, reverse_sample

    if args.length < 1:
        raise ValueError(f"--length must be >= 1, got {args.length}")
    if args.num_samples < 1:
        raise ValueError(f"-n must be >= 1, got {args.num_samples}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    steps = args.steps
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    draw = X0Draw(args.x0_mode, args.temperature, args.top_k, args.top_p)
    trajectory = Trajectory() if args.trajectory else None
    schedule = args.schedule or ("linear" if args.process == "delete" else "count")
    if args.process == "delete":
        from textdiff.models.insertion import load_insertion_model
        from textdiff.udm.deletion import decode, predictor_for, process_for, sample_delete

        model, tokenizer = load_insertion_model(args.model, device)
        process = process_for(model, tokenizer, schedule, args.corrector or "posterior")
        steps = steps or args.length
        out = sample_delete(predictor_for(model, tokenizer), process, args.num_samples, steps=steps, draw=draw,
                            seed=args.seed, trajectory=trajectory, progress=True, device=device)
        texts = decode(tokenizer, out)
    else:
        predictor, tokenizer, vocab, mask_id = build_predictor(Path(args.model or DEFAULT_MODEL), device,
                                                               subs=args.process == "mask")
        options = {"reveal": args.reveal} if args.process == "mask" else {}
        if args.process == "replace_diff":
            options["kernel"] = args.kernel
        elif args.kernel != "one_token":
            raise ValueError(f"--kernel applies to --process replace_diff only, got --process {args.process}")
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
