"""The recipes that recipes/gpu_checks.sh runs on a GPU machine, run here on CPU at their smallest sizes, so that the
device call (minutes of a scarce GPU) never finds them broken: every row printed and written, times positive, the
engines agreeing; and the script itself refusing a missing part before it touches the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def recipe(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_recipe(*args: str) -> str:
    result = recipe(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in output.splitlines()
            if line.startswith("| ") and not line.startswith("| workload")]


@pytest.mark.slow
def test_bench_gpu_rows(tmp_path):
    out = tmp_path / "rows.json"
    printed = table_rows(run_recipe("recipes/bench_gpu.py", "--quick", "--skip", "startup", "keywords",
                                    "--out", str(out)))
    rows = json.loads(out.read_text())
    assert [(r["row"], r["variant"]) for r in rows] == [(p[0], p[1]) for p in printed]
    assert [r["row"] for r in rows] == ["diffusion"] * 3 + ["gibbs"] * 2
    assert all(r["seconds"] > 0 and r["flops_per_step"] > 0 for r in rows)
    assert all(p[3].endswith("x") and float(p[3][:-1]) > 0 for p in printed)


@pytest.mark.slow
def test_bench_prompted_engines_agree():
    output = run_recipe("recipes/bench_prompted.py", "--random-weights", "--sets", "1", "--rows", "8",
                        "--drafts", "1")
    difference = next(line for line in output.splitlines() if line.startswith("largest score difference"))
    assert float(difference.split(":")[1].split()[0]) < 1e-3
    engines = [row[1].split()[0] for row in table_rows(output)]
    assert engines == ["PlainLM", "PromptedLM"] * 3


def test_bench_tokenize_rows_without_cuda():
    output = run_recipe("recipes/bench_tokenize.py", "--corpus", "data/corpus/denoiser_en", "--lines", "200",
                        "--workers", "0", "--repeats", "1",
                        "--rows", "sentencepiece sample,sample cpu,sample cuda,viterbi cuda")
    assert "textdiff sample cpu b256 lists" in output and "sentencepiece" in output
    ratio = next(line for line in output.splitlines() if line.strip().startswith("sample cpu "))
    assert float(ratio.split()[2].rstrip("x")) > 0


def test_bench_tokenize_without_text_says_so():
    result = recipe("recipes/bench_tokenize.py", "--corpus", "/nonexistent", "--workers", "0", timeout=120)
    assert result.returncode == 2 and "--corpus /nonexistent holds no .txt file" in result.stderr


def test_gpu_checks_needs_its_part():
    for args in ([], ["3"]):
        result = subprocess.run(["bash", "recipes/gpu_checks.sh", *args], cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "OUT": "/nonexistent/out"}, timeout=30)
        assert result.returncode == 2 and "usage: bash recipes/gpu_checks.sh 1|2" in result.stderr
