"""``textdiff tokenize``: segment stdin lines with a unigram model (Viterbi or exact sampling)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from textdiff.cli.common import _argument_type, add_device_option, add_seed_option, add_threads_option
from textdiff.defaults import default_asset

BATCH_LINES = 4096


#: the verb's line in ``textdiff --help`` (read without importing this module)
HELP = "segment text lines with a unigram tokenizer (Viterbi or exact sampling)"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenize",
        help=HELP,
        description="Read lines on stdin and write one line of space-separated pieces (or ids) per input line. "
        "Without --alpha (or with alpha < 0) every line gets its most probable segmentation (Viterbi: for "
        "SentencePiece models the ids of SentencePiece's encode, except where two segmentations have exactly equal "
        "float32 scores); with --alpha A in [0, 1e6] each line gets an exact random segmentation drawn with "
        "probability proportional to P(segmentation)^A over all segmentations (SentencePiece nbest_size=-1 law; "
        "A=0 is uniform, small A gives many short pieces, large A approaches Viterbi). Lines that are not UTF-8 "
        "are skipped and reported (exit status 2). See docs/tokenization.md.",
        epilog="example: echo 'Hello world' | textdiff tokenize --alpha 0.1 --seed 0",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="SentencePiece unigram .model, HF tokenizer.json (Unigram) or textdiff .safetensors tokenizer "
        "(default: the shipped English 8k model; $TEXTDIFF_TOKENIZER overrides it)",
    )
    parser.add_argument("--alpha", type=_argument_type(_alpha), default=None,
                        help="sampling exponent in [0, 1e6]; omit or give a negative number for Viterbi")
    add_seed_option(parser)
    add_device_option(parser, default="cpu")
    add_threads_option(parser)
    parser.add_argument("--ids", action="store_true", help="write piece ids instead of pieces")
    parser.add_argument(
        "--stats",
        action="store_true",
        help="instead of segmenting, print per line: log Z, entropy (nats) and expected number of pieces under "
        "--alpha (default 0.1), and the Viterbi piece count - to see what an alpha does to sequence length",
    )
    parser.set_defaults(func=run)


def _alpha(text: str) -> float:
    from textdiff.tokenization.tokenizer import check_alpha

    value = float(text)
    check_alpha(value)
    return value


def run(args: argparse.Namespace) -> int:
    import torch

    from textdiff import rng
    from textdiff.tokenization import UnigramTokenizer

    path = Path(args.model) if args.model is not None else default_asset("tokenizer")
    if not path.exists():
        raise FileNotFoundError(f"--model {path} does not exist")
    tok = UnigramTokenizer.from_pretrained(path)
    generator = None
    if args.alpha is not None and args.alpha >= 0 and not args.stats:
        generator = rng.make_generator(args.seed, None, args.device)
    out = sys.stdout
    totals = torch.zeros(4, dtype=torch.float64)
    n_lines = 0
    invalid: list[int] = []
    for lines in _batches(sys.stdin, invalid):
        n_lines += len(lines)
        if args.stats:
            alpha = 0.1 if args.alpha is None else args.alpha
            stats = tok.segmentation_stats(lines, alpha, device=args.device)
            table = torch.stack([stats[k] for k in ("log_z", "entropy", "expected_tokens", "viterbi_tokens")], 1)
            totals += table.sum(0)
            out.writelines(
                f"log_z={a:.4f}\tentropy={b:.4f}\texpected_tokens={c:.2f}\tviterbi_tokens={int(d)}\n"
                for a, b, c, d in table.tolist()
            )
            continue
        ids = tok.encode(lines, args.alpha, device=args.device, generator=generator)
        if args.ids:
            out.writelines(" ".join(map(str, row)) + "\n" for row in ids)
        else:
            pieces = tok.vocab.pieces
            out.writelines(" ".join(pieces[i] for i in row) + "\n" for row in ids)
    if args.stats and totals[3] > 0:
        print(
            f"# total: expected tokens {totals[2]:.1f} vs Viterbi {int(totals[3])} "
            f"({totals[2] / totals[3]:.2f}x); mean entropy {totals[1] / n_lines:.2f} nats per line",
            file=sys.stderr,
        )
    if invalid:
        raise ValueError(f"stdin line {invalid[0]} is not valid UTF-8 ({len(invalid)} such line(s), skipped; "
                         "the other lines were written)")
    return 0


def _batches(stream, invalid: list[int]):
    """Lists of at most ``BATCH_LINES`` lines of ``stream`` without their newline. Lines that are not valid UTF-8
    are skipped and their 1-based numbers appended to ``invalid``."""
    batch = []
    for number, line in enumerate(getattr(stream, "buffer", stream), 1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                invalid.append(number)
                continue
        batch.append(line.rstrip("\n"))
        if len(batch) == BATCH_LINES:
            yield batch
            batch = []
    if batch:
        yield batch
