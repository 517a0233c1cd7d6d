"""Keywords → sentences, the main job: one parser, one :func:`generate` front door, one :class:`Sentence` result,
and the methods registered by name (docs/design.md#applications).

``mh`` (default): Metropolis-Hastings chains over edits with exact acceptance ratios (:mod:`.mh`);
``diffusion``: the reverse deletion process grown from the keywords (:mod:`.diffusion`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from textdiff import checks
from textdiff.keywords.diffusion import generate_from_keywords
from textdiff.keywords.mh import KeywordGenerator, check_settings, default_generator
from textdiff.keywords.parse import inflections, parse_keywords
from textdiff.keywords.result import Sentence
from textdiff.registry import Registry

#: generation methods by name: ``method(keywords, n, **options) -> list[Sentence]``
METHODS = Registry("method")
register_method = METHODS.register


@register_method("mh")
def _generate_mh(keywords, n: int = 1, *, lm=None, mlm=None, device="cpu", proposal: str = "mlm", **options):
    check_settings(n, **options)
    return default_generator(lm, mlm, str(checks.device(device)), proposal).generate(keywords, n, **options)


@functools.lru_cache(maxsize=2)
def _insertion_model(name, device: str):
    from textdiff.models.hub import load_insertion  # on first use: transformers is not imported with the CLI

    return load_insertion(name, device)


@register_method("diffusion")
def _generate_diffusion(keywords, n: int = 1, *, insertion_model=None, device="cpu", **options):
    model, tokenizer = _insertion_model(insertion_model, str(checks.device(device)))
    return generate_from_keywords(model, tokenizer, keywords, n, **options)


def generate(keywords: str | Iterable[str], n: int = 1, *, method: str = "mh", **options) -> list[Sentence]:
    """``n`` distinct sentences containing every keyword, best first, by ``method`` (``mh`` or ``diffusion``) on
    the default models (loaded once per process). ``options`` go to the method: for ``mh`` ``steps``, ``chains``,
    ``seed``, ``inflect``, ``schedule``, ``temperature``, ``final_temperature``, ``output``, ``banned``,
    ``proposal``, ``lm``, ``mlm``, ``device``; for ``diffusion`` ``orders``, ``samples_per_order``, ``steps``,
    ``fill_mode``, ``seed``, ``insertion_model``, ``device``."""
    run = METHODS.get_checked(method)
    parse_keywords(keywords)
    return run(keywords, n, **options)


__all__ = ["METHODS", "KeywordGenerator", "Sentence", "generate", "generate_from_keywords", "inflections",
           "parse_keywords", "register_method"]
