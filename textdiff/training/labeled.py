"""Labelled sentences for guidance (docs/guidance.md#shipped-classifiers-and-data): the tasks, their TSV files and one
deterministic train / valid / test split shared by every model that learns from them.

The split is a function of the sentence text alone (CRC-32 modulo 10: 0 → ``test``, 1 → ``valid``, else ``train``),
so the guidance classifiers, the conditional denoiser and the evaluation classifier hold out the same sentences, and
a sentence that occurs twice never lands on both sides.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

from textdiff import checks
from textdiff.defaults import GUIDANCE_TASKS

#: task -> (file name, labels in class-index order)
TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sentiment": ("sentence_polarity.tsv", GUIDANCE_TASKS["sentiment"]),
    "subjectivity": ("subjectivity.tsv", GUIDANCE_TASKS["subjectivity"]),
}
SPLITS = ("train", "valid", "test")
DATA = Path(__file__).resolve().parents[2] / "data" / "labeled"


def split_of(text: str) -> str:
    """``train``, ``valid`` or ``test`` for a sentence (see the module docs)."""
    bucket = zlib.crc32(text.encode("utf-8")) % 10
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


@dataclass(frozen=True)
class LabeledSentences:
    """Sentences of one task and split with their class indices (into ``labels``)."""

    task: str
    labels: tuple[str, ...]
    texts: list[str]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def load_labeled(task: str, split: str, folder: str | Path = DATA) -> LabeledSentences:
    """The ``split`` of ``task`` read from ``folder/<task file>`` (TSV with a ``label<TAB>text`` header)."""
    checks.one_of("task", task, TASKS)
    checks.one_of("split", split, SPLITS)
    name, labels = TASKS[task]
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"labelled data for {task!r} not found at {path}")
    texts, targets = [], []
    with path.open(encoding="utf-8") as lines:
        header = next(lines, "").rstrip("\n").split("\t")
        if header != ["label", "text"]:
            raise ValueError(f"{path}: expected the header 'label<TAB>text', got {header!r}")
        for number, line in enumerate(lines, start=2):
            label, _, text = line.rstrip("\n").partition("\t")
            if label not in labels or not text.strip():
                raise ValueError(f"{path}:{number}: expected one of {labels} and a sentence, got {line!r}")
            if split_of(text) == split:
                texts.append(text)
                targets.append(labels.index(label))
    return LabeledSentences(task, labels, texts, targets)
