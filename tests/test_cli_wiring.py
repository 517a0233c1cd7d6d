"""CLI verbs that join two subsystems: `textdiff generate --method diffusion` runs the deletion process."""

from __future__ import annotations

import json

from textdiff.cli import main


def test_generate_by_diffusion_keeps_every_keyword(capsys):
    code = main(["generate", "--method", "diffusion", "-k", "dog frisbee catch", "-n", "2", "--seed", "0",
                 "--orders", "2", "--samples-per-order", "2", "--diffusion-steps", "4", "--json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert 1 <= len(lines) <= 2
    for record in lines:
        words = record["text"].replace(".", " ").split()
        positions = [words.index(k) for k in record["order"]]
        assert positions == sorted(positions) and set(record["order"]) == {"dog", "frisbee", "catch"}


def test_generate_rejects_bad_orders(capsys):
    assert main(["generate", "--method", "diffusion", "-k", "dog", "--orders", "many"]) == 2
