"""Packing and the resumable batch stream."""

from __future__ import annotations

import datasets
import pytest
import torch

from textdiff.training.data import BatchStream, DataPosition, PackingSpec, encode_function, load_packed_dataset


def test_packing_wraps_blocks_and_drops_the_tail():
    spec = PackingSpec(6, (1,), (2,), doc_sep_id=9)
    blocks = spec.pack([[5, 5, 5], [], [6, 6, 6, 6, 6], [7]])
    assert blocks == [[1, 5, 5, 5, 9, 2], [1, 6, 6, 6, 6, 2], [1, 6, 9, 7, 9, 2]][:len(blocks)]
    assert all(len(b) == 6 and b[0] == 1 and b[-1] == 2 for b in blocks)
    assert spec.protected_mask().tolist() == [True, False, False, False, False, True]
    with pytest.raises(ValueError, match="seq_len"):
        PackingSpec(2, (1,), (2,))


def test_word_list_tokenizer_with_encode_is_accepted(tmp_path):
    class WordIds:  # any object with encode(list[str]) -> list[list[int]] (e.g. textdiff's UnigramTokenizer)
        def encode(self, texts):
            return [[len(w) for w in t.split()] for t in texts]

    (tmp_path / "a.txt").write_text("aa bbb c\ndddd\n" * 10)
    ds = load_packed_dataset([tmp_path / "a.txt"], WordIds(), PackingSpec(4, doc_sep_id=0))
    assert ds[0]["input_ids"].tolist() == [2, 3, 1, 0]
    with pytest.raises(TypeError, match="tokenizer"):
        encode_function(object())


def rows(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_stream_resumes_exactly_and_reshuffles_each_epoch():
    ds = datasets.Dataset.from_dict({"input_ids": [[i, i] for i in range(10)]}).with_format("torch")
    full = rows(BatchStream(ds, 3, seed=4), 7)  # 3 batches per epoch (one row dropped), so 2+ epochs
    first_epoch = torch.cat(full[:3])[:, 0].tolist()
    assert len(set(first_epoch)) == 9
    assert torch.cat(full[3:6])[:, 0].tolist() != first_epoch
    stream = BatchStream(ds, 3, seed=4)
    head = rows(stream, 4)
    resumed = rows(BatchStream(ds, 3, seed=4, position=DataPosition(**vars(stream.position))), 3)
    for a, b in zip(head + resumed, full):
        assert torch.equal(a, b)


def test_ranks_see_disjoint_rows():
    ds = datasets.Dataset.from_dict({"input_ids": [[i] for i in range(16)]}).with_format("torch")
    r0 = torch.cat(rows(BatchStream(ds, 2, seed=1, rank=0, world_size=2), 4)).flatten().tolist()
    r1 = torch.cat(rows(BatchStream(ds, 2, seed=1, rank=1, world_size=2), 4)).flatten().tolist()
    assert not set(r0) & set(r1) and len(set(r0) | set(r1)) == 16
