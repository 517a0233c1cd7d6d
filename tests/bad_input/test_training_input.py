"""Bad input to ``textdiff train`` and to ``textdiff.training``: a clean error naming the input, never a traceback,
a hang, NaN weights on disk or NaN in a log (issue 16)."""

from __future__ import annotations

import json
import math
import pickle
import signal
from contextlib import contextmanager
from pathlib import Path

import datasets
import pytest
import torch
from conftest import Outcome, assert_clean_failure, run_cli, run_cli_here
from safetensors.torch import load_file

from textdiff.models import DenoiserConfig, DenoiserModel
from textdiff.models.hub import default_asset
from textdiff.training.checkpoint import CorruptCheckpoint
from textdiff.training.data import BatchStream, PackingSpec, check_text_file, load_packed_dataset
from textdiff.training.records import JsonLog, Loss, TrainingDiverged
from textdiff.training.trainer import TrainConfig, Trainer

TOKENIZER = default_asset("mlm")  # data/models/minilm-mlm in a source checkout
TINY = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--seq-len", "32", "--batch-size", "4",
        "--device", "cpu", "--eval-every", "0"]
WORDS = "the a cat dog sat ran on mat log and big small red blue".split()


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    """Text files: a corpus of a few dozen blocks, one short line, empty, blank and non-UTF-8 files."""
    root = tmp_path_factory.mktemp("texts")
    lines = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) for i in range(120)]
    contents = {"corpus.txt": ("\n".join(lines) + "\n").encode(), "one.txt": b"a short line\n", "empty.txt": b"",
                "blank.txt": b"\n   \n\t\n", "latin1.txt": "caf\u00e9 ok\nstill fine\nna\u00efve\n".encode("latin-1")}
    for name, data in contents.items():
        (root / name).write_bytes(data)
    return {name.removesuffix(".txt"): root / name for name in contents}


def train(*args: str, process: bool = False, timeout: int = 120) -> Outcome:
    """``textdiff train ARGS`` in this process (``process=False``: no interpreter start-up, most cases) or as
    ``python -m textdiff`` in a fresh one; either way a run longer than ``timeout`` s fails the test."""
    if not process:
        with deadline(timeout):
            return run_cli_here("train", *args)
    return run_cli("train", *args, timeout=timeout)


def assert_clean_error(outcome: Outcome, *words: str, code: int | None = None) -> str:
    """:func:`assert_clean_failure`, the exit status ``code`` when given; returns the ``textdiff train: error:``
    line, which must be the last line on stderr."""
    assert_clean_failure(outcome, *words)
    assert code is None or outcome.code == code, (outcome.code, outcome.err[-2000:])
    last = outcome.err.strip().splitlines()[-1]
    assert last.startswith("textdiff train: error:"), outcome.err[-2000:]
    return last


def strict_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file, failing on ``NaN``/``Infinity`` (which ``json`` would otherwise accept)."""

    def refuse(constant: str):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def all_weights_finite(run: Path) -> bool:
    return all(torch.isfinite(t).all() for ckpt in run.glob("checkpoint-*") for f in ckpt.glob("*.safetensors")
               for t in load_file(f).values())


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the body runs longer than ``seconds``."""

    def fail(*_):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- CLI: arguments rejected before any work ----------------------------------------------------------------------
# "process" cases start `python -m textdiff` (exit status and stderr as a user sees them); the others go through
# textdiff.cli.main in-process, which is the same code without the interpreter start-up.

ARGUMENT_CASES = [
    pytest.param("process", ["--lr", "inf"], ["lr", "inf"], id="lr-inf"),
    pytest.param("main", ["--seed", str(10**30)], ["--seed", "2**64"], id="huge-seed"),
    pytest.param("main", ["--threads", "-2"], ["--threads", "-2"], id="threads-negative"),
    pytest.param("main", ["--device", "foo"], ["--device", "foo"], id="device-foo"),
    pytest.param("main", ["--device", "cuda"], ["--device", "cuda"], id="device-cuda-without-gpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    pytest.param("main", ["--weight-decay", "nan"], ["weight_decay", "nan"], id="weight-decay-nan"),
    pytest.param("main", ["--lr", "nan"], ["lr", "nan"], id="lr-nan"),
    pytest.param("main", ["--lr", "-0.001"], ["lr"], id="lr-negative"),
    pytest.param("main", ["--t-min", "1"], ["t_min", "[0, 1)"], id="t-min-one"),
    pytest.param("main", ["--eval-blocks", "0"], ["eval_blocks", ">= 1"], id="eval-blocks-zero"),
    pytest.param("main", ["--grad-accum", "0"], ["grad_accum"], id="grad-accum-zero"),
    pytest.param("main", ["--heads", "0"], ["--heads"], id="heads-zero"),
    pytest.param("main", ["--seq-len", "2"], ["--seq-len", ">= 3"], id="seq-len-two"),
    pytest.param("main", ["--time-limit", "nan"], ["--time-limit"], id="time-limit-nan"),
    pytest.param("main", ["--tokenizer", "no/such/tokenizer"], ["--tokenizer", "no/such/tokenizer"],
                 id="tokenizer-missing"),
]


@pytest.mark.parametrize("how, extra, words", ARGUMENT_CASES)
def test_cli_rejects_bad_arguments(texts, tmp_path, how, extra, words):
    outcome = train("--train-files", str(texts["corpus"]), "--out", str(tmp_path / "run"), "--tokenizer",
                    str(TOKENIZER), "--max-steps", "2", *TINY, *extra, process=how == "process")
    assert_clean_error(outcome, *words)
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_cli_needs_a_tokenizer(texts, tmp_path):
    outcome = train("--train-files", str(texts["corpus"]), "--out", str(tmp_path / "run"), *TINY)
    assert_clean_error(outcome, "--tokenizer")


def test_cli_out_naming_a_file(texts, tmp_path):
    (tmp_path / "taken").write_text("keep me")
    outcome = train("--train-files", str(texts["corpus"]), "--out", str(tmp_path / "taken"), "--tokenizer",
                    str(TOKENIZER), *TINY)
    assert_clean_error(outcome, "--out", "taken", "not a directory")
    assert (tmp_path / "taken").read_text() == "keep me"


# -- CLI: bad training text -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("how, name, streaming, words", [
    pytest.param("main", "empty", False, ["empty.txt", "no text"], id="empty"),
    pytest.param("main", "blank", True, ["blank.txt", "no text"], id="blank-streaming"),
    pytest.param("main", "latin1", False, ["latin1.txt", "line 1", "UTF-8"], id="not-utf8"),
    pytest.param("main", "one", False, ["0 packed block", "batch"], id="less-than-a-batch"),
    pytest.param("process", "one", True, ["0 packed block", "batch"], id="less-than-a-batch-streaming-no-hang"),
])
def test_cli_rejects_unusable_text(texts, tmp_path, how, name, streaming, words):
    outcome = train("--train-files", str(texts[name]), "--out", str(tmp_path / "run"), "--tokenizer",
                    str(TOKENIZER), "--max-steps", "3", *TINY, *(["--streaming"] if streaming else []),
                    process=how == "process", timeout=90)
    assert_clean_error(outcome, *words)


def test_non_utf8_error_names_the_first_bad_line(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"fine\nalso fine\n\xff\xfe broken\nfine again\n")
    with pytest.raises(ValueError, match=r"mixed\.txt, line 3: not UTF-8 .*0xff"):
        check_text_file(path)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        check_text_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="at least one"):
        load_packed_dataset([], object(), PackingSpec(4))


# -- CLI: weights and checkpoints -----------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_cli_init_with_broken_safetensors(texts, tmp_path, damage):
    init = tmp_path / "init"
    init.mkdir()
    (init / "config.json").write_text((TOKENIZER / "config.json").read_text())
    with open(TOKENIZER / "model.safetensors", "rb") as f:
        head = f.read(4096)
    (init / "model.safetensors").write_bytes(head if damage == "truncated" else b"\x00\x01garbage" * 100)
    outcome = train("--train-files", str(texts["corpus"]), "--out", str(tmp_path / "run"), "--tokenizer",
                    str(TOKENIZER), "--init", str(init), "--max-steps", "1", *TINY)
    assert_clean_error(outcome, "model.safetensors")


def test_cli_resume_with_a_different_model_size(texts, tmp_path):
    common = ("--train-files", str(texts["corpus"]), "--out", str(tmp_path / "run"), "--tokenizer", str(TOKENIZER),
              *TINY)
    assert train(*common, "--max-steps", "1").code == 0
    outcome = train(*common, "--max-steps", "2", "--hidden-size", "64")
    assert_clean_error(outcome, "checkpoint-00000001", "different model", "32) in the checkpoint", "64) here")


def test_cli_resume_skips_a_corrupt_newest_checkpoint(texts, tmp_path):
    run = tmp_path / "run"
    common = ("--train-files", str(texts["corpus"]), "--out", str(run), "--tokenizer", str(TOKENIZER),
              "--save-every", "1", *TINY)
    assert train(*common, "--max-steps", "2").code == 0
    newest = run / "checkpoint-00000002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    outcome = train(*common, "--max-steps", "3", process=True)
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-3000:]
    notice = next(line for line in outcome.err.splitlines() if "resuming from" in line)
    assert "checkpoint-00000001" in notice and "checkpoint-00000002" in notice and "model.safetensors" in notice
    records = strict_json_lines(run / "log.jsonl")
    assert {"resumed_from_step": 1, "checkpoint": "checkpoint-00000001"} in records
    assert json.loads((run / "latest.json").read_text())["step"] == 3
    assert load_file(newest)  # rewritten whole by the resumed run


def test_cli_divergence_stops_and_keeps_the_last_good_checkpoint(texts, tmp_path):
    """A finite but absurd learning rate blows the weights up: training stops with exit 1 and a message, every
    checkpoint on disk is finite, ``latest.json`` names one of them, and the log is strict JSON."""
    run = tmp_path / "run"
    outcome = train("--train-files", str(texts["corpus"]), "--out", str(run), "--tokenizer", str(TOKENIZER),
                    *TINY, "--max-steps", "20", "--lr", "1e30", "--warmup-steps", "0", "--save-every", "1",
                    "--eval-every", "1", "--valid-files", str(texts["corpus"]), "--eval-blocks", "4", process=True)
    message = assert_clean_error(outcome, "training diverged at step", code=1)
    assert all_weights_finite(run)
    latest = run / "latest.json"
    if latest.exists():
        assert str(run / json.loads(latest.read_text())["checkpoint"]) in message
    else:
        assert "no checkpoint was saved" in message
    records = strict_json_lines(run / "log.jsonl") if (run / "log.jsonl").exists() else []
    assert all(math.isfinite(r["loss"]) for r in records)


# -- API ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, error", [
    ("lr", math.inf, ValueError), ("lr", math.nan, ValueError), ("lr", 0.0, ValueError), ("lr", "0.1", TypeError),
    ("weight_decay", math.nan, ValueError), ("weight_decay", -0.1, ValueError),
    ("clip_norm", 0.0, ValueError), ("min_lr_ratio", 1.5, ValueError), ("t_min", 1.0, ValueError),
    ("t_min", -0.1, ValueError), ("batch_size", 0, ValueError), ("batch_size", 2.0, TypeError),
    ("batch_size", True, TypeError), ("max_steps", -1, ValueError), ("warmup_steps", -1, ValueError),
    ("eval_blocks", 0, ValueError), ("eval_every", -5, ValueError), ("save_every", -1, ValueError),
    ("keep_checkpoints", 0, ValueError), ("seed", -1, ValueError), ("seed", 2**64, ValueError),
    ("objective", "mdlm", ValueError), ("loss_weighting", "mse", ValueError), ("antithetic", "yes", TypeError),
    ("bf16", 1, TypeError),
])
def test_train_config_names_the_bad_field(field, value, error):
    with pytest.raises(error, match=field):
        TrainConfig(**{field: value})


def test_train_config_accepts_the_edges():
    config = TrainConfig(lr=1, weight_decay=0, min_lr_ratio=1, t_min=0, warmup_steps=0, seed=2**64 - 1)
    assert isinstance(config.lr, float) and config.lr == 1.0


VOCAB, SEQ = 12, 8


def blocks(n: int) -> datasets.Dataset:
    """``n`` random packed blocks ``[CLS] w w w w w w [SEP]`` over ``VOCAB`` ids (1 ``[CLS]``, 2 ``[SEP]``, 3 mask)."""
    ids = torch.randint(4, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(n))
    ids[:, 0], ids[:, -1] = 1, 2
    return datasets.Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")


def tiny_trainer(out: Path, eval_dataset=None, hidden: int = 16, device="cpu", log=print, **settings) -> Trainer:
    """A 1-layer denoiser trainer on 16 random blocks."""
    config = DenoiserConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                            max_position_embeddings=SEQ)
    torch.manual_seed(0)
    options = dict(batch_size=4, max_steps=6, lr=1e-2, warmup_steps=0, eval_every=0, save_every=3, seed=0)
    return Trainer(DenoiserModel(config), TrainConfig(**options | settings), blocks(16),
                   PackingSpec(SEQ, (1,), (2,), 2), 3, out, eval_dataset, device=device, log=log)


@pytest.mark.parametrize("device", ["cuda", "foo", 7, "cuda:99", None])
def test_trainer_device_is_checked(tmp_path, device):
    if torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has a GPU")
    with pytest.raises((ValueError, TypeError), match="device"):
        tiny_trainer(tmp_path, device=device)


def test_out_dir_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="out_dir .*file exists and is not a directory"):
        tiny_trainer(tmp_path / "file")


def test_too_little_data_is_an_error_not_a_hang(tmp_path):
    (tmp_path / "short.txt").write_text("three words here\n")
    spec = PackingSpec(SEQ, (1,), (2,), 2)

    class Lengths:  # a tokenizer: one id per word
        def encode(self, texts):
            return [[4 + len(w) % 8 for w in t.split()] for t in texts]

    streamed = load_packed_dataset([tmp_path / "short.txt"], Lengths(), spec, streaming=True)
    with deadline(60), pytest.raises(ValueError, match="0 packed block.*fewer than one batch of 4"):
        next(iter(BatchStream(streamed, 4)))
    with pytest.raises(ValueError, match="3 packed block.*batch of 2 x 2 process"):
        BatchStream(blocks(3), 2, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        BatchStream(blocks(8), 2, rank=2, world_size=2)


def test_evaluation_never_reports_a_bound_on_nothing(tmp_path):
    with pytest.raises(ValueError, match="eval_dataset holds no complete block"):
        tiny_trainer(tmp_path, eval_dataset=blocks(0))
    trainer = tiny_trainer(tmp_path, eval_dataset=blocks(4))
    for kwargs, name in (({"max_blocks": 0}, "max_blocks"), ({"repeats": 0}, "repeats")):
        with pytest.raises(ValueError, match=name):
            trainer.evaluate(**kwargs)
    result = trainer.evaluate()
    assert result.tokens == 4 * 4 * (SEQ - 2) and 1 < result.ppl < 10 * VOCAB
    with pytest.raises(ValueError, match="max_steps"):
        trainer.train(max_steps=0, progress=False)
    with pytest.raises(ValueError, match="time_limit"):
        trainer.train(time_limit=math.nan, progress=False)


def test_non_finite_loss_stops_before_saving(tmp_path):
    """Weights poisoned after the step-3 checkpoint (what a diverging run looks like): the next step raises, the
    weights are not updated, and ``latest.json`` still names the intact checkpoint."""
    trainer = tiny_trainer(tmp_path)
    trainer.train(max_steps=3, progress=False)
    good = {k: v.clone() for k, v in trainer.core.state_dict().items()}
    with torch.no_grad():
        next(trainer.core.parameters()).fill_(math.nan)
    with pytest.raises(TrainingDiverged, match="diverged at step 4.*checkpoint-00000003"):
        trainer.train(progress=False)
    assert trainer.step == 3 and [r.step for r in trainer.history] == [1, 2, 3]
    assert all(math.isfinite(r.loss) and math.isfinite(r.grad_norm) for r in trainer.history)
    assert json.loads((tmp_path / "latest.json").read_text())["checkpoint"] == "checkpoint-00000003"
    with pytest.raises(TrainingDiverged, match="non-finite weights"):
        trainer.save_checkpoint()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-00000003"]
    resumed = tiny_trainer(tmp_path)
    assert resumed.load_checkpoint()
    for name, value in resumed.core.state_dict().items():
        assert torch.equal(value, good[name]), name


def test_json_log_refuses_nan(tmp_path):
    log = JsonLog(tmp_path / "log.jsonl", echo=False)
    log(Loss(1, 2.5, 0.5, 1e-3, 64))
    with pytest.raises(ValueError, match="loss=nan"):
        log(Loss(2, math.nan, 0.5, 1e-3, 128))
    with pytest.raises(ValueError, match="eval=inf"):
        log({"eval": math.inf})
    assert strict_json_lines(tmp_path / "log.jsonl") == [
        {"step": 1, "loss": 2.5, "grad_norm": 0.5, "lr": 1e-3, "tokens": 64}]


class Payload:
    """Unpickling this runs ``Path(marker).touch()``: a checkpoint file that would execute code if unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("damage", ["truncated-weights", "missing-weights", "truncated-optimizer",
                                    "pickle-optimizer", "bad-state-json"])
def test_resume_falls_back_to_the_previous_intact_checkpoint(tmp_path, damage):
    trainer = tiny_trainer(tmp_path, max_steps=6, save_every=3)
    trainer.train(progress=False)
    newest = tmp_path / "checkpoint-00000006"
    marker = tmp_path / "executed"
    if damage == "truncated-weights":
        (newest / "model.safetensors").write_bytes((newest / "model.safetensors").read_bytes()[:100])
    elif damage == "missing-weights":
        (newest / "model.safetensors").unlink()
    elif damage == "truncated-optimizer":
        (newest / "optimizer.pt").write_bytes((newest / "optimizer.pt").read_bytes()[:50])
    elif damage == "pickle-optimizer":
        with open(newest / "optimizer.pt", "wb") as f:
            pickle.dump({"optimizer": Payload(marker), "scheduler": {}}, f, protocol=2)
    else:
        (newest / "trainer_state.json").write_text('{"step": 6, "data_')
    notices: list[str] = []
    resumed = tiny_trainer(tmp_path, max_steps=6, save_every=3, log=notices.append)
    assert resumed.load_checkpoint() and resumed.step == 3
    assert not marker.exists()  # nothing was unpickled
    assert len(notices) == 1 and "checkpoint-00000003" in notices[0] and "checkpoint-00000006" in notices[0]
    # the resumed run continues exactly like the uninterrupted one
    reference = tiny_trainer(tmp_path / "reference", max_steps=6, save_every=0)
    expected = [r.loss for r in reference.train(progress=False)][3:]
    assert [r.loss for r in resumed.train(progress=False)] == expected


def test_resume_errors(tmp_path):
    trainer = tiny_trainer(tmp_path, max_steps=3, save_every=3)
    trainer.train(progress=False)
    with pytest.raises(ValueError, match=r"different model \(.*\(12, 16\) in the checkpoint, \(12, 32\) here"):
        tiny_trainer(tmp_path, hidden=32).load_checkpoint()
    (tmp_path / "checkpoint-00000003" / "model.safetensors").write_bytes(b"")
    with pytest.raises(CorruptCheckpoint, match="no intact checkpoint"):
        tiny_trainer(tmp_path).load_checkpoint()
    with pytest.raises(CorruptCheckpoint, match="does not exist"):
        tiny_trainer(tmp_path).load_checkpoint(tmp_path / "checkpoint-00000099")
    assert not tiny_trainer(tmp_path / "fresh").load_checkpoint()
