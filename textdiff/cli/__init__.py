"""``textdiff <verb>``: argument parsing only; each verb calls the Python API.

Every module of this package that defines ``add_parser(subparsers)`` is a verb; ``add_parser`` registers a
sub-parser whose ``func`` default runs it, and the module's ``HELP`` string is its line in ``textdiff --help``. Only
the verb being run is imported (its options name registries that import torch); the others are listed from their
``HELP``, read from the source without importing it, so ``textdiff --help`` starts no torch.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import pkgutil
import sys

from textdiff import __version__


def _help_line(module: str) -> str | None:
    """The ``HELP = "..."`` of verb ``module``, read from its source; ``None`` for a module that is not a verb."""
    tree = ast.parse(importlib.util.find_spec(module).loader.get_source(module))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["HELP"]:
            return ast.literal_eval(node.value)
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``textdiff`` parser with every verb's full sub-parser, or, given the command line ``argv``, only the verb
    it names (if any) in full and the others as a line."""
    parser = argparse.ArgumentParser(
        prog="textdiff",
        description="Sample text from discrete distributions: constrained generation (MCMC), MLM Gibbs sampling, "
        "discrete diffusion (UDM) and exact stochastic unigram tokenization. "
        "Run `textdiff VERB --help` for the options of one verb.",
    )
    parser.add_argument("--version", action="version", version=f"textdiff {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    names = sorted(info.name for info in pkgutil.iter_modules(__path__))
    wanted = None if argv is None else next((arg for arg in argv if not arg.startswith("-")), "")
    for name in names:
        module = f"{__name__}.{name}"
        line = _help_line(module)
        if line is not None and wanted in (None, name):
            importlib.import_module(module).add_parser(subparsers)
        elif line is not None:
            subparsers.add_parser(name, help=line)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    import torch

    from textdiff.cli.common import default_threads

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
