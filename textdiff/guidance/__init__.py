"""Guidance: steer the samplers toward a label or a reference (docs/guidance.md).

Scores (:mod:`~textdiff.guidance.scores`) say how much a state fits; the samplers take them through
:class:`CandidateReweighting` (diffusion: a logits hook, exact for one-token steps), :func:`target_term` (MH) and
:func:`tilted_energy` (MH-corrected Gibbs); :class:`ClassifierFreePredictor` mixes a conditional model's heads.
"""

from textdiff.guidance.candidates import CandidateReweighting
from textdiff.guidance.energy import target_term, tilted_energy
from textdiff.guidance.free import ClassifierFreeInsertion, ClassifierFreePredictor, mix_log_probs
from textdiff.guidance.scores import ClassifierScore, GuidanceScore, SimilarityScore, require_same_vocabulary

__all__ = ["CandidateReweighting", "ClassifierFreeInsertion", "ClassifierFreePredictor", "ClassifierScore",
           "GuidanceScore", "SimilarityScore", "mix_log_probs", "require_same_vocabulary", "target_term",
           "tilted_energy"]
