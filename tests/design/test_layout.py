"""The layout the design promises (docs/design.md#layout): engines import only the ground floor, imports only go
down the layers, no package cycle (function-level imports included), extension by registration."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import textdiff

PACKAGE = Path(textdiff.__file__).parent
#: layer of every top-level part of the package; a module may import its own part and lower layers only
LAYERS = {
    "textdiff": 0, "rng": 0, "checks": 0, "support": 0, "padding": 0, "compat": 0, "metrics": 0, "registry": 0, "defaults": 0,
    "udm": 1, "mcmc": 1, "tokenization": 1,
    "models": 2, "guidance": 2,
    "training": 3, "keywords": 3, "sampling": 3,
    "cli": 4, "__main__": 4,
}
ENGINES = ("udm", "mcmc", "tokenization")


def part(module: str) -> str:
    """``textdiff.udm.deletion.process`` -> ``udm``; ``textdiff`` -> ``textdiff``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else pieces[0]


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file()


def imports() -> list[tuple[str, str, int]]:
    """``(importer, imported, line)`` for every textdiff import in the package, at any nesting level."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        source = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("textdiff"):
                targets = [node.module] + [f"textdiff.{a.name}" for a in node.names
                                           if node.module == "textdiff" and is_module(a.name)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("textdiff")]
            else:
                continue
            found += [(source, target, node.lineno) for target in targets if target != "textdiff"]
    return found


def test_every_part_has_a_layer():
    parts = {part(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


def test_imports_only_go_down():
    upward = [f"{src}:{line} imports {dst}" for src, dst, line in imports()
              if part(src) != part(dst) and LAYERS[part(dst)] > LAYERS[part(src)]]
    assert not upward, upward


def test_engines_import_only_the_ground_floor_and_themselves():
    crossing = [f"{src}:{line} imports {dst}" for src, dst, line in imports()
                if part(src) in ENGINES and part(dst) != part(src) and LAYERS[part(dst)] != 0]
    assert not crossing, crossing


def test_no_package_cycle():
    edges = {(part(src), part(dst)) for src, dst, _ in imports() if part(src) != part(dst)}
    graph: dict[str, set[str]] = {}
    for src, dst in edges:
        graph.setdefault(src, set()).add(dst)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = sorted(p for p in graph if reaches(p, p, {p}))
    assert not cycles, cycles


def test_nothing_imports_recipes_or_tests():
    bad = [f"{src}:{line}" for src, dst, line in imports() if dst.split(".")[0] in ("recipes", "tests")]
    assert not bad


def test_a_toy_process_registered_in_a_test_reaches_make_process_and_the_cli():
    from textdiff.cli import build_parser
    from textdiff.udm import PROCESSES, ForwardProcess, Batch, make_process, register_process

    @register_process("toy_reverse_identity")
    class ToyProcess(ForwardProcess):
        """Corrupts nothing: x_t = x0 (enough to be built, listed and run by the generic loop)."""

        def corrupt(self, x0, t, noise):
            return x0

        def posterior_corrupted(self, x0, x_t, t, generator):
            return torch.zeros_like(x0.ids, dtype=torch.bool)

    try:
        process = make_process("toy_reverse_identity", schedule="linear")
        assert isinstance(process, ToyProcess) and process.name == "toy_reverse_identity"
        sample = next(a for a in build_parser()._subparsers._group_actions[0].choices["sample"]._actions
                      if a.dest == "process")
        assert "toy_reverse_identity" in sample.choices
        with pytest.raises(ValueError, match="already registered"):
            register_process("toy_reverse_identity")(type("Other", (ToyProcess,), {}))
        assert process.corrupt(Batch(torch.ones(1, 3, dtype=torch.long)), 0.5, None).ids.sum() == 3
    finally:
        PROCESSES.pop("toy_reverse_identity")


def test_a_toy_proposal_registered_in_a_test_reaches_the_cli():
    from textdiff.cli import build_parser
    from textdiff.mcmc.proposals import PROPOSALS, register_proposal

    @register_proposal("toy_uniform")
    class ToyProposal:
        """A placeholder class: registration alone must make it a ``--proposal`` choice."""

    try:
        generate = build_parser()._subparsers._group_actions[0].choices["generate"]
        assert "toy_uniform" in next(a for a in generate._actions if a.dest == "proposal").choices
    finally:
        PROPOSALS.pop("toy_uniform")


def test_a_toy_guidance_kind_registered_in_a_test_reaches_every_sampler_and_the_cli():
    from textdiff.cli import build_parser
    from textdiff.guidance import CandidateReweighting
    from textdiff.sampling import GUIDANCE, Guidance

    class Shorter:
        """``log w(x)`` = minus the number of tokens."""

        def log_weight(self, ids, attention_mask):
            return -attention_mask.sum(-1).double()

        def log_weight_texts(self, texts):
            return -torch.tensor([len(t.split()) for t in texts], dtype=torch.float64)

    @GUIDANCE.register("toy_shorter")
    def shorter(guidance, tokenizer):
        return Shorter()

    try:
        verbs = build_parser()._subparsers._group_actions[0].choices
        for verb in ("sample", "generate", "gibbs"):
            assert "toy_shorter" in next(a for a in verbs[verb]._actions if a.dest == "guidance").choices
        guidance = Guidance(kind="toy_shorter", label="any", scale=1.5)
        tokenizer = type("Tok", (), {"mask_token_id": 3})()
        assert isinstance(guidance.logits_hooks(tokenizer)[0], CandidateReweighting)
        assert guidance.target_term()(["a b", "a"]).tolist() == [-3.0, -1.5]
        energy = guidance.energy(lambda ids, mask: torch.zeros(len(ids), dtype=torch.float64), None)
        assert energy(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4)).tolist() == [6.0, 6.0]
    finally:
        GUIDANCE.pop("toy_shorter")
