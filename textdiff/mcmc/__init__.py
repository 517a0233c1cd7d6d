"""MCMC text sampling: exact Metropolis-Hastings constrained generation and batched MLM Gibbs sampling.

* ``generate(keywords, n=1, steps=200, seed=None, inflect=False, ...)`` — sentences containing every keyword
  (``textdiff generate``); ``KeywordGenerator`` keeps models loaded across calls.
* ``MetropolisHastings``, ``State``, ``MoveProbs``, ``temperature_schedule`` — the exact MH sampler (ALGORITHMS.md §7).
* ``MLMProposal``, ``CausalLMProposal`` — token proposals; ``CausalLMScorer``, ``ConstrainedLMTarget``,
  ``KeywordMeasure`` — targets.
* ``gibbs_sample`` — batched MLM Gibbs chains (ALGORITHMS.md §6; ``textdiff gibbs``).
"""

from textdiff.mcmc.generate import KeywordGenerator, Sentence, generate
from textdiff.mcmc.gibbs import GibbsResult, gibbs_sample
from textdiff.mcmc.mh import MetropolisHastings, MHResult, MoveProbs, State, temperature_schedule
from textdiff.mcmc.proposals import CausalLMProposal, MLMProposal
from textdiff.mcmc.targets import CausalLMScorer, ConstrainedLMTarget, KeywordMeasure

__all__ = [
    "CausalLMProposal", "CausalLMScorer", "ConstrainedLMTarget", "GibbsResult", "KeywordGenerator", "KeywordMeasure",
    "MHResult", "MLMProposal", "MetropolisHastings", "MoveProbs", "Sentence", "State", "generate", "gibbs_sample",
    "temperature_schedule",
]
