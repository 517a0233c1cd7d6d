"""Bad input through the CLI: a one-line error naming the input, a non-zero exit, never a traceback, a hang or silently
changed output. Most cases run ``textdiff.cli.main`` in this process (fast); a few run ``python -m textdiff`` in a
subprocess with a timeout, to check the process-level behaviour (exit status, no traceback on stderr)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_clean_failure, run_cli, run_cli_here
from safetensors.torch import save_file

from textdiff.models.hub import default_asset

MLM = default_asset("mlm")
INSERTION = default_asset("insertion")


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def truncated_mlm(tmp_path_factory) -> Path:
    model = copy_model(MLM, tmp_path_factory.mktemp("bad") / "truncated")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 4096])
    return model


@pytest.fixture(scope="module")
def garbage_insertion(tmp_path_factory) -> Path:
    model = copy_model(INSERTION, tmp_path_factory.mktemp("bad") / "garbage")
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    return model


@pytest.fixture(scope="module")
def pickle_mlm(tmp_path_factory) -> Path:
    model = copy_model(MLM, tmp_path_factory.mktemp("bad") / "pickled")
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"not unpickled, only named")
    return model


GPU = torch.cuda.is_available()


@pytest.mark.skipif(GPU, reason="the machine has a GPU, so --device cuda is valid")
@pytest.mark.parametrize("verb", [["generate", "-k", "dog"], ["gibbs"], ["sample"]])
def test_cuda_without_a_gpu(verb):
    assert_clean_failure(run_cli(*verb, "--device", "cuda"), "--device", "no cuda gpu")


@pytest.mark.parametrize("value", ["foo", "cuda:x", "7"])
def test_unknown_devices(value):
    assert_clean_failure(run_cli_here("gibbs", "--device", value), "--device")


@pytest.mark.parametrize("seed", ["99999999999999999999999999", "-1", "1.5"])
def test_seed_out_of_range(seed):
    assert_clean_failure(run_cli_here("gibbs", "--seed", seed), "--seed")


def test_threads_must_be_positive():
    assert_clean_failure(run_cli_here("gibbs", "--threads", "-2"), "--threads")


def test_truncated_weights_in_every_loader(truncated_mlm, garbage_insertion):
    assert_clean_failure(run_cli("gibbs", "--model", str(truncated_mlm)), "safetensors", "truncated or corrupt")
    for args in (["sample", "--model", str(truncated_mlm)],
                 ["generate", "-k", "dog", "--mlm", str(truncated_mlm)],
                 ["generate", "-k", "dog", "--method", "diffusion", "--insertion-model", str(garbage_insertion)]):
        assert_clean_failure(run_cli_here(*args), "safetensors", "truncated or corrupt")


def test_pickle_weights_are_refused_with_a_conversion_hint(pickle_mlm):
    outcome = run_cli_here("gibbs", "--model", str(pickle_mlm))
    assert_clean_failure(outcome, "pytorch_model.bin", "never unpickled", "save_pretrained")


def test_a_masked_lm_is_not_a_causal_lm():
    assert_clean_failure(run_cli_here("generate", "-k", "dog", "--lm", str(MLM)), "not a causal lm")


def test_a_mistyped_relative_path_is_not_looked_up_on_the_hub(tmp_path):
    assert_clean_failure(run_cli_here("gibbs", "--model", str(tmp_path / "data/model/minilm")), "no such file")
    assert_clean_failure(run_cli_here("gibbs", "--model", "./data/model/minilm"), "no such file")


def test_gibbs_that_would_keep_no_sample():
    assert_clean_failure(run_cli_here("gibbs", "--burn-in", "10", "--steps", "4"), "burn_in")


def test_a_banned_keyword_is_an_error_not_infinity_in_json():
    outcome = run_cli("generate", "-k", "dog frisbee", "--ban", "dog", "--steps", "2", "--chains", "2", "--json")
    assert_clean_failure(outcome, "banned", "dog")
    assert "Infinity" not in outcome.out


@pytest.mark.parametrize("keywords, name", [("dog\x01cat", "dog\\x01cat"), ("[unused1] dog", "[unused1]"),
                                            ("##ing dog", "##ing"), ("dog dog", "distinct")])
def test_keywords_that_are_not_words(keywords, name):
    assert_clean_failure(run_cli_here("generate", "-k", keywords, "--steps", "2"), name)


@pytest.mark.parametrize("method", ["mh", "diffusion"])
def test_keywords_the_models_cannot_write(method):
    outcome = run_cli_here("generate", "-k", "café dog", "--method", method, "--steps", "2", "--chains", "2")
    assert_clean_failure(outcome, "keyword 'café'", "cannot be written exactly")
    emoji = run_cli_here("generate", "-k", "\N{DOG FACE} dog", "--method", method, "--steps", "2", "--chains", "2")
    assert_clean_failure(emoji, "keyword '\N{DOG FACE}'")


def test_orders_option_is_checked_at_parse_time():
    assert_clean_failure(run_cli_here("generate", "-k", "dog", "--method", "diffusion", "--orders", "0"), "--orders")


def test_unreadable_model_config(tmp_path):
    model = copy_model(MLM, tmp_path / "edited")
    (model / "config.json").write_text("{ not json")
    assert_clean_failure(run_cli_here("gibbs", "--model", str(model)), "config.json")


def test_empty_weights_file_in_an_otherwise_valid_directory(tmp_path):
    model = copy_model(MLM, tmp_path / "empty")
    save_file({}, str(model / "model.safetensors"))
    outcome = run_cli_here("gibbs", "--model", str(model), "--steps", "2", "--burn-in", "0")
    assert outcome.code != 0 and "Traceback" not in outcome.err, outcome.err


@pytest.mark.parametrize("verb", [["generate", "-k", "dog"], ["gibbs"], ["sample"]])
def test_unknown_dtype(verb):
    assert_clean_failure(run_cli_here(*verb, "--dtype", "int8"), "--dtype", "invalid choice")
