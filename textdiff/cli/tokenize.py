"""``textdiff tokenize``: segment stdin lines with a unigram model (Viterbi or exact sampling)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "data" / "tokenizers" / "en-unigram-8k.model"
BATCH_LINES = 4096


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenize",
        help="segment text lines with a unigram tokenizer (Viterbi or exact sampling)",
        description="Read lines on stdin and write one line of space-separated pieces (or ids) per input line. "
        "Without --alpha (or with alpha < 0) every line gets its most probable segmentation (Viterbi, identical "
        "to SentencePiece's encode); with --alpha A >= 0 each line gets an exact random segmentation drawn with "
        "probability proportional to P(segmentation)^A over all segmentations (SentencePiece nbest_size=-1 law; "
        "A=0 is uniform, small A gives many short pieces, large A approaches Viterbi).",
        epilog="example: echo 'Hello world' | textdiff tokenize --alpha 0.1 --seed 0",
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="SentencePiece unigram .model, HF tokenizer.json (Unigram) or textdiff .safetensors tokenizer "
        "(default: the shipped English 8k model, %(default)s)",
    )
    parser.add_argument("--alpha", type=float, default=None, help="sampling exponent; omit or < 0 for Viterbi")
    parser.add_argument("--seed", type=int, default=None, help="random seed (samples are reproducible on CPU)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    parser.add_argument("--ids", action="store_true", help="write piece ids instead of pieces")
    parser.add_argument(
        "--stats",
        action="store_true",
        help="instead of segmenting, print per line: log Z, entropy (nats) and expected number of pieces under "
        "--alpha (default 0.1), and the Viterbi piece count - to see what an alpha does to sequence length",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from textdiff import rng
    from textdiff.tokenization import UnigramTokenizer

    path = Path(args.model)
    if not path.exists():
        raise FileNotFoundError(f"--model {path} does not exist")
    tok = UnigramTokenizer.from_pretrained(path)
    generator = None
    if args.alpha is not None and args.alpha >= 0 and not args.stats:
        generator = rng.make_generator(args.seed, None, args.device)
    out = sys.stdout
    totals = torch.zeros(4, dtype=torch.float64)
    n_lines = 0
    for batch in _batches(sys.stdin):
        lines = [text.rstrip("\n") for text in batch]
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
    return 0


def _batches(stream):
    batch = []
    for line in stream:
        batch.append(line)
        if len(batch) == BATCH_LINES:
            yield batch
            batch = []
    if batch:
        yield batch
