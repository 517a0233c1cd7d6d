"""Labelled data: one deterministic, disjoint train / valid / test split of every task, and clear errors."""

from __future__ import annotations

import pytest

from textdiff.training.labeled import DATA, SPLITS, TASKS, load_labeled, split_of

#: data lines (header excluded) of the shipped TSV files
SIZES = {"sentiment": 10662, "subjectivity": 10000}


@pytest.fixture(scope="module", params=sorted(TASKS))
def task_splits(request):
    if not (DATA / TASKS[request.param][0]).is_file():
        pytest.skip(f"{DATA} has no data for {request.param}")
    return request.param, {split: load_labeled(request.param, split) for split in SPLITS}


def test_splits_are_disjoint_complete_and_sized(task_splits):
    task, splits = task_splits
    assert sum(len(s) for s in splits.values()) == SIZES[task]
    texts = {split: set(s.texts) for split, s in splits.items()}
    assert not texts["train"] & texts["valid"] and not texts["train"] & texts["test"]
    assert not texts["valid"] & texts["test"]
    for split, share in (("test", 0.1), ("valid", 0.1), ("train", 0.8)):
        assert abs(len(splits[split]) / SIZES[task] - share) < 0.02, (split, len(splits[split]))


def test_split_follows_the_text_and_is_repeatable(task_splits):
    task, splits = task_splits
    for split, data in splits.items():
        assert {split_of(t) for t in data.texts} == {split}
        again = load_labeled(task, split)
        assert again.texts == data.texts and again.targets == data.targets


def test_labels_and_both_classes_in_every_split(task_splits):
    task, splits = task_splits
    for data in splits.values():
        assert data.task == task and data.labels == TASKS[task][1] and len(data.targets) == len(data.texts)
        counts = [data.targets.count(k) for k in range(len(data.labels))]
        assert min(counts) > 0.4 * len(data), counts


def test_small_file(tmp_path):
    texts = [f"sentence number {i} ." for i in range(60)]
    lines = ["label\ttext"] + [f"{'positive' if i % 2 else 'negative'}\t{t}" for i, t in enumerate(texts)]
    (tmp_path / TASKS["sentiment"][0]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    seen = []
    for split in SPLITS:
        data = load_labeled("sentiment", split, tmp_path)
        assert data.texts == [t for t in texts if split_of(t) == split]
        assert data.targets == [texts.index(t) % 2 for t in data.texts]
        seen += data.texts
    assert sorted(seen) == sorted(texts)


@pytest.mark.parametrize("task, split, name", [("sentimental", "train", "task"), ("sentiment", "dev", "split"),
                                               ("subjectivity", "", "split")])
def test_bad_arguments_name_the_parameter(task, split, name):
    with pytest.raises(ValueError, match=name):
        load_labeled(task, split)


@pytest.mark.parametrize("content, match", [("text\tlabel\npositive\tok .\n", "header"),
                                            ("label\ttext\nneutral\tok .\n", ":2:"),
                                            ("label\ttext\npositive\t  \n", ":2:")])
def test_bad_files(tmp_path, content, match):
    (tmp_path / TASKS["sentiment"][0]).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load_labeled("sentiment", "train", tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="subjectivity"):
        load_labeled("subjectivity", "test", tmp_path)
