"""``textdiff <verb>``: argument parsing only; each verb calls the Python API.

Every module of this package that defines ``add_parser(subparsers)`` is a verb; ``add_parser`` registers a
sub-parser whose ``func`` default runs it. Heavy imports happen inside the verb's function so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from textdiff import __version__
from textdiff.cli.common import default_threads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textdiff",
        description="Sample text from discrete distributions: constrained generation (MCMC), MLM Gibbs sampling, "
        "discrete diffusion (UDM) and exact stochastic unigram tokenization. "
        "Run `textdiff VERB --help` for the options of one verb.",
    )
    parser.add_argument("--version", action="version", version=f"textdiff {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "add_parser"):
            module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    import torch

    torch.set_num_threads(getattr(args, "threads", None) or default_threads())
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        return 0
    except (ValueError, TypeError, OSError) as err:
        message = " ".join(str(err).split())
        print(f"textdiff {args.verb}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
