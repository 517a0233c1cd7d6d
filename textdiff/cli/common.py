"""Options every verb shares, validated at parse time so a bad value gives a one-line usage error."""

from __future__ import annotations

import argparse
import os

from textdiff import checks
from textdiff.checks import SEED_LIMIT


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help only where it says something: not where the help already names
    the default, and not for a default of ``None``, ``False`` or a preset flag's constant."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return super()._get_help_string(action)


def _argument_type(convert):
    """An argparse ``type=`` that turns the ``ValueError``/``TypeError`` of ``convert`` into a usage error."""

    def parse(text: str):
        try:
            return convert(text)
        except (ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = convert.__name__
    return parse


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"must be an integer in [0, 2**64), got {text}")
    return value


def _device(text: str) -> str:
    return str(checks.device(text))


def _threads(text: str) -> int:
    return checks.positive_int("threads", int(text))


def add_seed_option(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    parser.add_argument("--seed", type=_argument_type(_seed), default=default,
                        help="random seed in [0, 2**64): the same seed gives the same output on CPU")


def add_device_option(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--device", type=_argument_type(_device), default=default,
                        help="torch device: cpu, cuda or cuda:N"
                        + ("" if default else " (default: cuda when available)"))


def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=checks.DTYPES, default="auto",
                        help="precision of the model forwards (default: auto = bfloat16 on CUDA, float32 on CPU); "
                        "log-probabilities and draws stay float64")


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_argument_type(_threads), default=None,
                        help="torch intra-op CPU threads (default: the cores not already busy, at least 1; "
                        "$OMP_NUM_THREADS wins when set)")


def default_threads() -> int:
    """CPU threads for torch: ``$OMP_NUM_THREADS`` when set, else the cores the 1-minute load leaves free (≥ 1).

    On a busy machine more threads than free cores make small-batch forwards far slower (threads wait on each
    other), so the default never oversubscribes.
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
    return max(1, cores - busy)


def default_device() -> str:
    """``cuda`` when a GPU is available, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_guidance_options(parser: argparse.ArgumentParser, *, diffusion: bool, default_scale: float = 4.0) -> None:
    """``--label``, ``--reference``, ``--guidance`` (the registered kinds; those that replace the model only for
    ``diffusion``), ``--guidance-scale``, ``--classifier``, and for ``diffusion`` ``--guidance-top-k``
    (docs/guidance.md#using-guidance); :func:`guidance_from_args` reads them."""
    from textdiff.defaults import LABEL_TASK
    from textdiff.sampling import GUIDANCE, Guidance

    kinds = tuple(k for k in GUIDANCE if diffusion or not getattr(GUIDANCE[k], "conditional_model", False))

    group = parser.add_argument_group("guidance (steer toward a label or a reference text)")
    group.add_argument("--label", default=None,
                       help=f"steer toward this label ({', '.join(LABEL_TASK)} with the shipped models, or a label "
                       "of --classifier)")
    group.add_argument("--reference", default=None, help="steer toward sentences similar to this text "
                       "(--guidance similarity)")
    group.add_argument("--guidance", choices=list(kinds), default=None,
                       help=f"how to steer (default: {kinds[0]} with --label, similarity with --reference)")
    group.add_argument("--guidance-scale", type=_argument_type(_scale), default=default_scale,
                       help="guidance strength: γ for classifier/similarity (the law is tilted by w(x)^γ), w for cfg; "
                       "0 turns guidance off")
    group.add_argument("--classifier", default=None,
                       help="classifier directory or hub name (default: the shipped one of the label's task)")
    if diffusion:
        group.add_argument("--guidance-top-k", type=_argument_type(_top_k), default=Guidance.top_k,
                           help="diffusion: candidates reweighted per drawn position")
    parser.set_defaults(guidance_kinds=tuple(kinds))


def _top_k(text: str) -> int:
    return checks.positive_int("guidance top-k", int(text))


def _scale(text: str) -> float:
    return checks.finite_float("guidance scale", float(text), low=0)


def guidance_from_args(args: argparse.Namespace, device: str):
    """The :class:`textdiff.sampling.Guidance` the options ask for, or ``None`` without ``--label``/``--reference``."""
    if args.label is None and args.reference is None:
        if args.guidance is not None or args.classifier is not None:
            raise ValueError("--guidance and --classifier need --label (or --reference for similarity)")
        return None
    from textdiff.sampling import Guidance

    kind = args.guidance or ("similarity" if args.label is None else args.guidance_kinds[0])
    return Guidance(label=args.label, scale=args.guidance_scale, kind=kind, reference=args.reference,
                    classifier=args.classifier, top_k=getattr(args, "guidance_top_k", Guidance.top_k), device=device,
                    dtype=args.dtype)
