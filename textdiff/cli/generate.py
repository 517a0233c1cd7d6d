"""``textdiff generate``: sentences that contain every keyword (:func:`textdiff.keywords.generate`)."""

from __future__ import annotations

import argparse
import json
import sys

from tqdm.auto import tqdm

from textdiff import checks
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
from textdiff.keywords import METHODS, generate_iter, parse_keywords
from textdiff.keywords.presets import PRESETS, preset
from textdiff.mcmc.proposals import PROPOSALS

#: the verb's line in ``textdiff --help`` (read without importing this module)
HELP = "generate fluent sentences that contain given keywords (constrained MCMC)"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help=HELP,
        description="Generate sentences containing every keyword with batched Metropolis-Hastings chains: "
        "a masked LM (MiniLM) proposes replace/insert/delete edits, SmolLM2-135M scores fluency, keywords are "
        "protected blocks, and simulated annealing keeps the best sentence each chain visits.",
        formatter_class=HelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--keywords", "-k", help='keywords, e.g. "dog frisbee catch" (any order)')
    source.add_argument("--input", metavar="FILE",
                        help="many keyword sets, one per line ('-': standard input); prints one JSON object per "
                        'input line, in order: {"keywords": [...], "sentences": [...]} or {"line": N, "input": ..., '
                        '"error": ...}; exits 1 if any line failed')
    parser.add_argument("--batch-size", type=int, default=64,
                        help="--method mh: chains in flight at once; the chains of several keyword sets share every "
                        "forward pass (a set's seeded output does not depend on the batch)")
    parser.add_argument("-n", type=int, default=1, help="number of distinct sentences to print")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--fast", dest="preset", action="store_const", const="fast", default="default",
                       help=f"--method mh: the fast preset ({describe('fast')})")
    speed.add_argument("--quality", dest="preset", action="store_const", const="quality",
                       help=f"--method mh: the quality preset ({describe('quality')})")
    parser.add_argument("--steps", type=int, default=None, help="MH steps per chain (default: the preset's; "
                        f"default preset: {describe('default')})")
    parser.add_argument("--chains", type=int, default=None, help="parallel chains (default: max(n, the preset's))")
    parser.add_argument("--drafts", type=int, default=None,
                        help="LM drafts sampled per set as start states (default: the preset's; 0: none)")
    add_seed_option(parser)
    add_device_option(parser)
    add_dtype_option(parser)
    add_threads_option(parser)
    parser.add_argument("--inflect", action="store_true", help="allow inflected keyword forms (dogs, caught, ...)")
    parser.add_argument("--proposal", choices=list(PROPOSALS), default="mlm",
                        help="edit proposal: masked-LM conditional, or causal-LM top-K re-scored (Su's CGMH)")
    parser.add_argument("--lm", default=None, help="causal LM directory or hub name (default: SmolLM2-135M)")
    parser.add_argument("--mlm", default=None,
                        help="masked LM directory or hub name (default: the shipped MiniLM MLM; "
                        "$TEXTDIFF_MLM overrides)")
    parser.add_argument("--schedule", choices=["geometric", "linear", "constant"], default="geometric",
                        help="annealing schedule of the temperature")
    parser.add_argument("--temperature", type=float, default=1.0, help="initial temperature τ0 (> 0)")
    parser.add_argument("--final-temperature", type=float, default=0.05,
                        help="temperature reached at 80%% of the steps (> 0)")
    parser.add_argument("--output", choices=["best", "final"], default="best",
                        help="per chain: best-scoring state seen, or the final state")
    parser.add_argument("--ban", action="append", default=[], help="a word that must not appear (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per sentence, with scores")
    add_guidance_options(parser, diffusion=False)
    diffusion = parser.add_argument_group("--method diffusion (reverse deletion process started from the keywords)")
    parser.add_argument("--method", choices=list(METHODS), default="mh",
                        help="mh: Metropolis-Hastings chains; diffusion: insertion chain of the deletion process "
                        "started from x_t = keywords (keywords kept in order, lemma form)")
    diffusion.add_argument("--insertion-model", default=None,
                           help="insertion model directory (default: the shipped one; $TEXTDIFF_INSERTION overrides)")
    diffusion.add_argument("--orders", type=orders_option, default=6,
                           help="keyword orders to try: 'all', 'given' or a number")
    diffusion.add_argument("--samples-per-order", type=int, default=4, help="chains per keyword order")
    diffusion.add_argument("--diffusion-steps", type=int, default=12, help="reverse steps from t* to 0")
    diffusion.add_argument("--fill-mode", choices=["oneshot", "iterative"], default="oneshot",
                           help="fill inserted tokens at once (factorised) or one at a time (exact given exact "
                           "conditionals)")
    parser.set_defaults(func=run)


def describe(name: str) -> str:
    """A preset's settings, for ``--help``."""
    settings = PRESETS[name]
    return f"{settings.steps} steps, {settings.chains} chains, {settings.drafts} drafts"


def orders_option(text: str) -> str | int:
    """``--orders``: ``all``, ``given`` or a positive integer."""
    if text in ("all", "given"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be 'all', 'given' or an integer >= 1, got {text!r}")


def read_sets(path: str) -> list[tuple[list[str] | ValueError, str]]:
    """``(keywords, line text)`` per line of ``path`` (``-``: stdin); the keywords are the ``ValueError`` naming the
    line where it cannot be a keyword set."""
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        lines = stream.read().splitlines()
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    sets = []
    for number, raw in enumerate(lines, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            sets.append((ValueError(f"line {number} is not valid UTF-8 (byte {err.start})"),
                         raw.decode("utf-8", "replace")))
            continue
        try:
            sets.append((parse_keywords(text), text))
        except (ValueError, TypeError) as err:
            sets.append((ValueError(f"line {number}: {err}" if text.strip() else f"line {number} is empty"), text))
    return sets


def run(args) -> int:
    args.device = args.device or default_device()
    if args.method == "diffusion":
        options = dict(insertion_model=args.insertion_model, orders=args.orders,
                       samples_per_order=args.samples_per_order, steps=args.diffusion_steps, fill_mode=args.fill_mode)
    else:
        options = dict(lm=args.lm, mlm=args.mlm, proposal=args.proposal,
                       **preset(args.preset).options(args.n, steps=args.steps, chains=args.chains,
                                                     drafts=args.drafts),
                       inflect=args.inflect, schedule=args.schedule, temperature=args.temperature,
                       final_temperature=args.final_temperature, output=args.output, banned=args.ban,
                       batch_size=checks.positive_int("--batch-size", args.batch_size))
    options["guidance"] = guidance_from_args(args, args.device)
    inputs = [(parse_keywords(args.keywords), args.keywords)] if args.keywords is not None else read_sets(args.input)
    runnable = [keywords for keywords, _ in inputs if not isinstance(keywords, ValueError)]
    results = generate_iter(runnable, args.n, method=args.method, device=args.device, dtype=args.dtype,
                            seed=args.seed, progress=True, **options) if runnable else iter([])
    failed = 0
    lines = tqdm(inputs, desc="keyword sets", unit="set", disable=args.keywords is not None or len(inputs) < 2)
    for number, (keywords, raw) in enumerate(lines, 1):  # each line printed once its batch has run
        result = keywords if isinstance(keywords, ValueError) else next(results)
        if args.keywords is not None:  # one set: plain sentences, or the error
            if isinstance(result, ValueError):
                raise result
            for sentence in result:
                print(json.dumps(sentence.to_dict(), allow_nan=False, ensure_ascii=False) if args.json
                      else sentence.text)
            continue
        if isinstance(result, ValueError):
            failed += 1
            record = {"line": number, "input": raw, "error": str(result)}
        else:
            record = {"keywords": keywords, "sentences": [s.to_dict() for s in result]}
        print(json.dumps(record, allow_nan=False, ensure_ascii=False), flush=True)
    if failed:
        print(f"textdiff generate: error: {failed} of {len(inputs)} input lines failed (see their \"error\")",
              file=sys.stderr)
    return 1 if failed else 0
