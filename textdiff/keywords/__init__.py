"""Keywords → sentences, the main job: one parser, one :func:`generate` front door, one :class:`Sentence` result,
and the methods registered by name (docs/design.md#applications).

``mh`` (default): Metropolis-Hastings chains over edits with exact acceptance ratios (:mod:`.mh`);
``diffusion``: the reverse deletion process grown from the keywords (:mod:`.diffusion`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence

from textdiff import checks
from textdiff.keywords.diffusion import generate_from_keywords
from textdiff.keywords.mh import KeywordGenerator, check_settings, default_generator
from textdiff.keywords.parse import inflections, parse_keywords
from textdiff.keywords.result import Sentence
from textdiff.registry import Registry

#: generation methods by name: ``method(keyword_sets, n, **options)`` returns an iterator over the sets, in order,
#: of each set's sentences or the ``ValueError`` that stopped it (settings checked before it returns)
METHODS = Registry("method")
register_method = METHODS.register


@register_method("mh")
def _generate_mh(keyword_sets, n: int = 1, *, lm=None, mlm=None, device="cpu", dtype="auto", proposal: str = "mlm",
                 guidance=None, **options):
    check_settings(n, **options)
    device = checks.device(device)
    generator = default_generator(lm, mlm, str(device), proposal, checks.dtype(dtype, device))
    if guidance is not None:  # the target becomes π · w^γ (docs/guidance.md#mcmc)
        options["soft"] = [*options.get("soft", ()), guidance.target_term()]
    return generator.generate_iter(keyword_sets, n, **options)


@functools.lru_cache(maxsize=2)
def _insertion_model(name, device: str, dtype):
    from textdiff.models.hub import load_insertion  # on first use: transformers is not imported with the CLI

    return load_insertion(name, device, dtype)


@register_method("diffusion")
def _generate_diffusion(keyword_sets, n: int = 1, *, insertion_model=None, device="cpu", dtype="auto", guidance=None,
                        **options):
    device = checks.device(device)
    model, tokenizer = _insertion_model(insertion_model, str(device), checks.dtype(dtype, device))
    hooks = guidance.logits_hooks(tokenizer) if guidance is not None else []  # fill candidates reweighted

    def each() -> Iterator[list[Sentence] | ValueError]:
        for keywords in keyword_sets:
            try:
                yield generate_from_keywords(model, tokenizer, keywords, n, logits_hooks=hooks, **options)
            except ValueError as err:
                yield err

    return each()


def generate_many(keyword_sets: Sequence[str | Iterable[str]], n: int = 1, *, method: str = "mh",
                  **options) -> list[list[Sentence] | ValueError]:
    """Per keyword set, its ``n`` best distinct sentences, or the ``ValueError`` that stopped that set (the
    others still run). With ``method="mh"`` the chains of several sets share every forward pass, at most
    ``batch_size`` chains (default 64) at a time, and each set's seeded output is what :func:`generate` gives for
    it alone."""
    return list(generate_iter(keyword_sets, n, method=method, **options))


def generate_iter(keyword_sets: Sequence[str | Iterable[str]], n: int = 1, *, method: str = "mh",
                  **options) -> Iterator[list[Sentence] | ValueError]:
    """:func:`generate_many`'s results one by one, in input order, each as soon as it is ready (``mh``: when its
    batch of sets has run), so that a long run can write as it goes. Bad settings raise before it returns."""
    run = METHODS.get_checked(method)
    if isinstance(keyword_sets, str) or not isinstance(keyword_sets, Sequence):
        raise TypeError("keyword_sets must be a list of keyword sets (strings or lists of strings)")
    return run(list(keyword_sets), n, **options)


def generate(keywords: str | Iterable[str], n: int = 1, *, method: str = "mh", **options) -> list[Sentence]:
    """``n`` distinct sentences containing every keyword, best first, by ``method`` (``mh`` or ``diffusion``) on
    the default models (loaded once per process). ``options`` go to the method: for ``mh`` ``steps``, ``chains``,
    ``drafts`` (LM drafts as start states; presets in ``textdiff.keywords.presets``), ``seed``, ``inflect``,
    ``schedule``, ``temperature``, ``final_temperature``, ``output``, ``banned``, ``proposal``, ``lm``, ``mlm``,
    ``device``, ``dtype``; for ``diffusion`` ``orders``, ``samples_per_order``, ``steps``, ``fill_mode``, ``seed``,
    ``insertion_model``, ``device``, ``dtype`` (model forwards; ``auto``: bfloat16 on CUDA, float32 elsewhere); for
    both ``guidance`` (a :class:`textdiff.sampling.Guidance`: steer toward a label or a reference,
    docs/guidance.md#using-guidance)."""
    run = METHODS.get_checked(method)
    parse_keywords(keywords)
    result = next(run([keywords], n, **options))
    if isinstance(result, ValueError):
        raise result
    return result


__all__ = ["METHODS", "KeywordGenerator", "Sentence", "generate", "generate_from_keywords", "generate_iter",
           "generate_many", "inflections", "parse_keywords", "register_method"]
