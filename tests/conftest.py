"""Shared test fixtures: device selection (GPU tests skip cleanly without CUDA) and paths to shared data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Run a test on the CPU and, when present, on CUDA."""
    return request.param


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """English corpora: ../shared/data/corpus/en, else the subsample shipped in data/corpus/denoiser_en."""
    for candidate in (SHARED / "data" / "corpus" / "en", REPO / "data" / "corpus" / "denoiser_en"):
        if candidate.is_dir() and any(candidate.glob("*.txt")):
            return candidate
    pytest.skip("no English corpus found in ../shared/data/corpus/en or data/corpus/denoiser_en")
