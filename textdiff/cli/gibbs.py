"""``textdiff gibbs``: batched MLM Gibbs sampling from a masked LM (docs/mcmc.md#mlm-gibbs-sampling)."""

from __future__ import annotations

from textdiff import rng
from textdiff.cli.common import (
    HelpFormatter,
    add_device_option,
    add_dtype_option,
    add_guidance_options,
    add_seed_option,
    add_threads_option,
    default_device,
    guidance_from_args,
)
from textdiff.mcmc.gibbs import (
    ORDERS,
    gibbs_sample,
    masked_init,
    pseudo_log_likelihood_energy,
    random_lengths,
    text_init,
)
from textdiff.support import TokenSupport

#: the verb's line in ``textdiff --help`` (read without importing this module)
HELP = "sample sentences from a masked LM by Gibbs sampling (BERT has a Mouth)"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "gibbs",
        help=HELP,
        description="Batched MLM Gibbs sampling: each step every chain masks one position and redraws it from "
        "the masked LM's conditional (float64 draws; special tokens never drawn, WordPiece ## pieces never open "
        "a sentence). Start from seed sentences "
        "(--text) or from [MASK]s of a given or random length. With --label (or --reference) every redraw becomes an "
        "MH proposal for the target exp(-E) w(x)^γ, E the pseudo-log-likelihood energy (Goyal et al.'s MH-corrected "
        "Gibbs).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", default=None,
                        help="masked LM directory or hub name (default: the shipped MiniLM MLM; "
                        "$TEXTDIFF_MLM overrides)")
    parser.add_argument("--text", action="append", default=None, help="seed sentence (repeatable; one chain each)")
    parser.add_argument("--chains", type=int, default=4, help="chains started from [MASK]s (without --text)")
    parser.add_argument("--length", type=int, default=None,
                        help="tokens per [MASK] chain (default: random in 8..32, as Su)")
    parser.add_argument("--steps", type=int, default=500, help="Gibbs steps (one token per chain per step)")
    parser.add_argument("--burn-in", type=int, default=200, help="steps before samples are kept")
    parser.add_argument("--thin", type=int, default=100, help="keep every THIN-th state after burn-in")
    parser.add_argument("--order", choices=ORDERS, default="random", help="position order")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (changes the law)")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the top-k tokens only (changes the law)")
    add_guidance_options(parser, diffusion=False)
    add_seed_option(parser)
    add_device_option(parser)
    add_dtype_option(parser)
    add_threads_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from textdiff.models.hub import load_mlm  # transformers loads with the verb, not with --help

    args.device = args.device or default_device()
    model, tokenizer = load_mlm(args.model, device=args.device, dtype=args.dtype)
    generator = rng.make_generator(args.seed, device=args.device)
    if args.text:
        init = text_init(tokenizer, args.text)
    else:
        if args.chains < 1:
            raise ValueError(f"--chains must be >= 1, got {args.chains}")
        lengths = ([args.length] * args.chains if args.length is not None
                   else random_lengths(args.chains, 8, 32, generator))
        init = masked_init(tokenizer, lengths)
    support = TokenSupport.from_tokenizer(tokenizer, model.config.vocab_size)
    guidance = guidance_from_args(args, args.device)
    energy = None if guidance is None else guidance.energy(pseudo_log_likelihood_energy(model, support), tokenizer)
    result = gibbs_sample(model, init, support, steps=args.steps, burn_in=args.burn_in, thin=args.thin,
                          order=args.order, temperature=args.temperature, top_k=args.top_k, generator=generator,
                          device=args.device, progress=True, energy=energy)
    for chain, samples in enumerate(result.samples):
        for sample in samples:
            print(f"[{chain}] {tokenizer.decode(sample, skip_special_tokens=True)}")
    return 0
