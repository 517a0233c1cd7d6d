"""CLI verbs that join two subsystems: `textdiff generate --method diffusion` runs the deletion process."""

from __future__ import annotations

import json

import pytest

from textdiff.cli import main


def test_generate_by_diffusion_keeps_every_keyword(capsys):
    code = main(["generate", "--method", "diffusion", "-k", "dog frisbee catch", "-n", "2", "--seed", "0",
                 "--orders", "2", "--samples-per-order", "2", "--diffusion-steps", "4", "--json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert 1 <= len(lines) <= 2
    for record in lines:
        words = record["text"].replace(".", " ").split()
        positions = [words.index(k) for k in record["keywords"]]
        assert positions == sorted(positions) and set(record["keywords"]) == {"dog", "frisbee", "catch"}
        assert record["method"] == "diffusion"


def test_generate_rejects_bad_orders(capsys):
    with pytest.raises(SystemExit) as exit_:  # a usage error, at parse time
        main(["generate", "--method", "diffusion", "-k", "dog", "--orders", "many"])
    assert exit_.value.code == 2 and "--orders" in capsys.readouterr().err
