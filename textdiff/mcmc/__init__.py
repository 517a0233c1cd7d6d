"""MCMC text sampling: exact Metropolis-Hastings constrained generation and batched MLM Gibbs sampling.

* ``MetropolisHastings``, ``State``, ``MoveProbs``, ``temperature_schedule`` — the exact MH sampler
  (docs/mcmc.md#metropolis-hastings-constrained-generation).
* ``MLMProposal``, ``CausalLMProposal`` — token proposals; ``CausalLMScorer``, ``ConstrainedLMTarget``,
  ``KeywordMeasure`` — targets.
* ``textdiff.mcmc.prompted`` — a causal LM run as rows after stored prompts (the target's scoring, the LM drafts;
  docs/mcmc.md#rows-after-prompts).
* ``gibbs_sample`` — batched MLM Gibbs chains (docs/mcmc.md#mlm-gibbs-sampling; ``textdiff gibbs``).
"""

from textdiff.compat import moved
from textdiff.mcmc.gibbs import GibbsResult, gibbs_sample
from textdiff.mcmc.mh import MetropolisHastings, MHResult, MoveProbs, State, temperature_schedule
from textdiff.mcmc.proposals import PROPOSALS, CausalLMProposal, MLMProposal, ProposalModels, register_proposal
from textdiff.mcmc.targets import CausalLMScorer, ConstrainedLMTarget, KeywordMeasure

__all__ = [
    "CausalLMProposal", "CausalLMScorer", "ConstrainedLMTarget", "GibbsResult", "KeywordMeasure",
    "MHResult", "MLMProposal", "MetropolisHastings", "MoveProbs", "PROPOSALS", "ProposalModels", "State",
    "gibbs_sample",
    "register_proposal",
    "temperature_schedule",
]

__getattr__ = moved(__name__, {name: "textdiff.keywords" for name in ("generate", "KeywordGenerator", "Sentence")})
