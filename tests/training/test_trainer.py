"""The real training loop: one-batch overfit, exact resume, DDP with 2 CPU processes (gloo), CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from textdiff.cli import main
from textdiff.models import DenoiserConfig, DenoiserModel
from textdiff.training.data import PackingSpec, load_packed_dataset
from textdiff.training.records import JsonLog
from textdiff.training.trainer import TrainConfig, Trainer, lr_lambda

SEQ = 16


def make_trainer(toy_data, tmp_path, objective="mask", **overrides):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_data / "tokenizer")
    spec = PackingSpec.for_tokenizer(tok, SEQ)
    train = load_packed_dataset([toy_data / "train.txt"], tok, spec)
    config = DenoiserConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=SEQ, causal=objective == "ar")
    settings = dict(objective=objective, batch_size=8, max_steps=20, lr=3e-3, warmup_steps=5, eval_every=0,
                    save_every=0, seed=1)
    settings.update(overrides)
    torch.manual_seed(0)
    return Trainer(DenoiserModel(config), TrainConfig(**settings), train, spec, tok.mask_token_id, tmp_path,
                   device="cpu"), train



@pytest.mark.parametrize("objective", ["mask", "ar"])
def test_one_batch_overfit(toy_data, tmp_path, objective, one_thread):
    """The toy sentences are i.i.d. word choices: below the unigram entropy only by memorising the batch."""
    trainer, train = make_trainer(toy_data, tmp_path, objective, max_steps=1000, t_min=0.05, warmup_steps=10)
    trainer.stream.dataset = train.select(range(8))  # one batch, seen over and over
    losses = [r.loss for r in trainer.train(progress=False)]
    first, last = sum(losses[:5]) / 5, sum(losses[-20:]) / 20
    assert last < 0.3 * first, (first, last)


def test_elbo_weighting_trains_the_reported_bound(toy_data, tmp_path, one_thread):
    """``loss_weighting="elbo"``: the training loss IS the per-token ELBO of the batch (the same η(t) weights the
    evaluation uses), unlike the UDM loss; and descending it lowers the held-out bound."""
    trainer, train = make_trainer(toy_data, tmp_path, loss_weighting="elbo", max_steps=150, t_min=0.05)
    ids = train[:8]["input_ids"]
    loss, elbo, n = trainer.loss(ids, torch.Generator().manual_seed(3))
    assert torch.isclose(loss.double(), elbo.sum() / n.sum(), rtol=1e-6)
    udm, _ = make_trainer(toy_data, tmp_path / "udm")
    udm_loss, udm_elbo, udm_n = udm.loss(ids, torch.Generator().manual_seed(3))
    assert not torch.isclose(udm_loss.double(), udm_elbo.sum() / udm_n.sum(), rtol=1e-3)
    before = trainer.evaluate(train, max_blocks=32).nll
    trainer.train(progress=False)
    assert trainer.evaluate(train, max_blocks=32).nll < before - 0.5
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainConfig(loss_weighting="mdlm")


def test_resume_gives_identical_losses(toy_data, tmp_path, one_thread):
    straight, _ = make_trainer(toy_data, tmp_path / "a", max_steps=7, save_every=3)
    reference = [r.loss for r in straight.train(progress=False)]
    interrupted, _ = make_trainer(toy_data, tmp_path / "b", max_steps=7, save_every=3)
    interrupted.train(max_steps=5, progress=False)  # killed between the checkpoints at 3 and 6
    resumed, _ = make_trainer(toy_data, tmp_path / "b", max_steps=7, save_every=3)
    assert resumed.load_checkpoint() and resumed.step == 3
    losses = [r.loss for r in resumed.train(progress=False)]
    assert losses == reference[3:]
    # the checkpoint holds safetensors + JSON + a tensors-only optimizer file, written atomically
    latest = json.loads((tmp_path / "b" / "latest.json").read_text())
    names = {p.name for p in (tmp_path / "b" / latest["checkpoint"]).iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.pt", "trainer_state.json"} <= names
    assert not list((tmp_path / "b").glob("*.tmp"))


def test_loss_records_match_the_schedule_and_the_log(toy_data, tmp_path, one_thread):
    """Every step returns a ``Loss``: the lr the step used (warm-up then cosine), the tokens consumed so far, the
    evaluation on evaluation steps; the ``record`` callback and ``JsonLog`` write exactly those records."""
    trainer, train = make_trainer(toy_data, tmp_path, max_steps=6, warmup_steps=2, eval_every=3, eval_blocks=8)
    trainer.eval_dataset = train
    trainer.record = JsonLog(tmp_path / "log.jsonl", echo=False)
    records = trainer.train(progress=False)
    factor = lr_lambda(trainer.config)
    assert [r.step for r in records] == list(range(1, 7))
    assert [r.lr for r in records] == pytest.approx([3e-3 * factor(s) for s in range(6)])
    assert [r.tokens for r in records] == [s * 8 * SEQ for s in range(1, 7)]
    assert [r.evaluation is not None for r in records] == [False, False, True, False, False, True]
    assert records[2].evaluation.tokens == 4 * 8 * (SEQ - 2)  # 4 draws x 8 blocks x corruptible tokens
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [records[2].as_dict(), records[5].as_dict()]
    assert set(logged[0]) == {"step", "loss", "grad_norm", "lr", "tokens", "eval_nll", "eval_ppl", "eval_tokens"}


def test_elbo_evaluation_matches_ar_scale(toy_data, tmp_path):
    """Held-out ELBO perplexity is a per-token bound on the same tokens the AR baseline scores: an untrained model
    is near |V| for both."""
    for objective in ("mask", "ar"):
        trainer, train = make_trainer(toy_data, tmp_path / objective, objective)
        result = trainer.evaluate(train, max_blocks=16)
        assert 5 < result.ppl < 60, (objective, result)


def cli_args(toy_data, out, *extra):
    return ["train", "--train-files", str(toy_data / "train.txt"), "--valid-files", str(toy_data / "valid.txt"),
            "--tokenizer", str(toy_data / "tokenizer"), "--out", str(out), "--hidden-size", "32", "--layers", "2",
            "--heads", "2", "--seq-len", str(SEQ), "--batch-size", "4", "--eval-blocks", "8", "--device", "cpu",
            *extra]


def test_cli_streaming_and_export(toy_data, tmp_path, capsys):
    assert main(cli_args(toy_data, tmp_path / "run", "--max-steps", "3", "--streaming", "--export",
                         str(tmp_path / "model"))) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["final_step"] == 3 and final["eval_ppl"] > 1
    loaded = DenoiserModel.from_pretrained(tmp_path / "model")
    assert loaded.dtype == torch.float16


def test_ddp_two_cpu_processes(toy_data, tmp_path):
    """The same CLI under torchrun with 2 processes (gloo): trains, checkpoints, evaluates."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "textdiff",
           *cli_args(toy_data, tmp_path / "ddp", "--max-steps", "4", "--save-every", "2")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    latest = json.loads((tmp_path / "ddp" / "latest.json").read_text())
    assert latest["step"] == 4
    state = json.loads((tmp_path / "ddp" / latest["checkpoint"] / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["data_offset"] == 4 * 2 * 4  # 4 steps x 2 ranks x batch 4


def test_bad_inputs(toy_data, tmp_path, capsys):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"weight": torch.zeros(2)}, pickled / "pytorch_model.bin")
    assert main(["train", "--train-files", str(toy_data / "train.txt"), "--out", str(tmp_path / "x"), "--init",
                 str(pickled), "--tokenizer", str(toy_data / "tokenizer")]) == 2
    assert "pickle" in capsys.readouterr().err
    assert main(cli_args(toy_data, tmp_path / "y", "--max-steps", "0")) == 2
    assert "max_steps" in capsys.readouterr().err
    assert main(cli_args(toy_data, tmp_path / "z", "--seq-len", "2")) == 2
    assert main(["train", "--train-files", str(tmp_path / "missing*.txt"), "--out", str(tmp_path / "w"),
                 "--tokenizer", str(toy_data / "tokenizer")]) == 2
