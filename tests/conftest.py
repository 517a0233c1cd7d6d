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
    """English corpora: the project's copy in data/ first, then ../shared/data/corpus/en."""
    for candidate in (REPO / "data" / "corpus" / "en", SHARED / "data" / "corpus" / "en"):
        if candidate.is_dir():
            return candidate
    pytest.skip("no English corpus found in data/corpus/en or ../shared/data/corpus/en")
