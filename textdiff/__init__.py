"""textdiff: sampling text from discrete distributions.

Unified discrete diffusion (UDM) on tokens, MLM Gibbs sampling, exact Metropolis-Hastings constrained generation and
exact Viterbi-sampling unigram tokenization, batched on CPU and CUDA. Import the sub-packages for the API:
``textdiff.keywords``, ``textdiff.sampling``, ``textdiff.tokenization``, ``textdiff.udm``, ``textdiff.mcmc``,
``textdiff.guidance``, ``textdiff.models``, ``textdiff.training``.
"""

__version__ = "0.1.0"
