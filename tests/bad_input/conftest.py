"""Helpers for the bad-input suite: run the CLI (in this process, or in a subprocess with a timeout) and read its
verdict."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def run_cli_here(*args: str) -> Outcome:
    """``textdiff ARGS`` through :func:`textdiff.cli.main` in this process: an exception escaping ``main`` (what
    would be a traceback) fails the test by propagating."""
    from textdiff.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse usage errors
            code = exit_.code
    return Outcome(int(code or 0), out.getvalue(), err.getvalue())


def run_cli(*args: str, timeout: float = 240, stdin: bytes | None = None, cwd=None) -> Outcome:
    """``python -m textdiff ARGS`` in a fresh process (a hang fails the test through the timeout)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "textdiff", *args], input=stdin, capture_output=True,
                          timeout=timeout, env=env, cwd=cwd)
    return Outcome(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))


def assert_clean_failure(outcome: Outcome, *needles: str) -> None:
    """Non-zero exit, no traceback, a one-line error that mentions every needle (case-insensitive)."""
    assert outcome.code != 0, outcome
    assert "Traceback" not in outcome.err, outcome.err
    lines = [line for line in outcome.err.splitlines() if "error" in line.lower()]
    assert lines, outcome.err
    message = lines[-1].lower()
    for needle in needles:
        assert needle.lower() in message, (needle, outcome.err)


@pytest.fixture
def cli():
    return run_cli
