"""Speed / quality presets of keyword generation by MH (docs/mcmc.md#presets): the run settings ``textdiff generate
--fast`` / ``--quality`` pick; explicit options override them. Measured time and scores: docs/mcmc.md#presets."""

from __future__ import annotations

from dataclasses import dataclass

from textdiff import checks
from textdiff.keywords.mh import DRAFTS, STEPS


@dataclass(frozen=True)
class Preset:
    """MH steps per chain, chains per set (at least ``n``) and LM drafts sampled per set."""

    steps: int
    chains: int
    drafts: int

    def options(self, n: int = 1, **overrides) -> dict:
        """Keyword arguments of ``generate_many`` for ``n`` sentences; ``overrides`` that are not ``None`` win."""
        out = {"steps": self.steps, "chains": max(n, self.chains), "drafts": self.drafts}
        out.update({k: v for k, v in overrides.items() if v is not None})
        return out


PRESETS = {
    "fast": Preset(steps=10, chains=4, drafts=4),
    "default": Preset(steps=STEPS, chains=4, drafts=DRAFTS),
    "quality": Preset(steps=100, chains=8, drafts=16),
}


def preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` naming ``preset`` otherwise."""
    return PRESETS[checks.one_of("preset", name, PRESETS)]
