"""Keywords as users write them: one parser for every method, and English inflections (docs/mcmc.md#keywords).

Inflections are rule-based English forms (plural / 3rd person, past, participles, -ing) plus a table of common
irregular words; a keyword always keeps its lemma as one of its forms.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

IRREGULAR = {
    "be": ["is", "are", "was", "were", "been", "being"], "have": ["has", "had", "having"],
    "do": ["does", "did", "done", "doing"], "go": ["goes", "went", "gone", "going"],
    "man": ["men"], "woman": ["women"], "child": ["children"], "person": ["people"], "foot": ["feet"],
    "tooth": ["teeth"], "mouse": ["mice"], "knife": ["knives"], "leaf": ["leaves"], "wife": ["wives"],
    "shelf": ["shelves"], "sheep": [], "fish": ["fishes"], "goose": ["geese"],
}
IRREGULAR_VERBS = (
    "arise arose arisen|bear bore born|beat beat beaten|become became become|begin began begun|bend bent bent|"
    "bite bit bitten|blow blew blown|break broke broken|bring brought brought|build built built|buy bought bought|"
    "catch caught caught|choose chose chosen|come came come|cut cut cut|dig dug dug|draw drew drawn|"
    "drink drank drunk|drive drove driven|eat ate eaten|fall fell fallen|feed fed fed|feel felt felt|"
    "fight fought fought|find found found|fly flew flown|forget forgot forgotten|freeze froze frozen|get got gotten|"
    "give gave given|grow grew grown|hang hung hung|hear heard heard|hide hid hidden|hit hit hit|hold held held|"
    "keep kept kept|know knew known|lay laid laid|lead led led|leave left left|lend lent lent|let let let|"
    "lie lay lain|light lit lit|lose lost lost|make made made|meet met met|pay paid paid|put put put|"
    "read read read|ride rode ridden|ring rang rung|rise rose risen|run ran run|say said said|see saw seen|"
    "sell sold sold|send sent sent|set set set|shake shook shaken|shine shone shone|shoot shot shot|"
    "shut shut shut|sing sang sung|sink sank sunk|sit sat sat|sleep slept slept|slide slid slid|speak spoke spoken|"
    "spend spent spent|spin spun spun|split split split|spread spread spread|stand stood stood|steal stole stolen|"
    "stick stuck stuck|sting stung stung|strike struck struck|swim swam swum|swing swung swung|take took taken|"
    "teach taught taught|tear tore torn|tell told told|think thought thought|throw threw thrown|wake woke woken|"
    "wear wore worn|weave wove woven|win won won|wind wound wound|write wrote written"
)
IRREGULAR_PAST = set()
for _entry in IRREGULAR_VERBS.split("|"):
    _base, _past, _participle = _entry.split()
    IRREGULAR.setdefault(_base, []).extend([_past, _participle])
    IRREGULAR_PAST.add(_base)

_VOWELS = "aeiou"


def _check_keyword(word: str) -> str:
    """``word`` if it is plain text a sentence can contain; ``ValueError`` naming it otherwise."""
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in word):
        raise ValueError(f"keyword {word!r} holds a control, format or unpaired surrogate character")
    if word.startswith("##") or re.fullmatch(r"\[[^\]]*\]|<[^>]*>", word):
        raise ValueError(f"keyword {word!r} looks like a tokenizer piece or special token, not a word")
    return word


def parse_keywords(keywords: str | Iterable[str]) -> list[str]:
    """``"dog frisbee catch"`` / ``"dog, frisbee"`` / a list -> stripped, non-empty, distinct keywords.

    A string is split on commas and whitespace; a list keeps each item whole. ``ValueError`` names a keyword that is
    not plain text (control characters, lone surrogates, ``##`` pieces, ``[special]`` tokens) or a repeated one.
    """
    items = re.split(r"[,\s]+", keywords) if isinstance(keywords, str) else keywords
    items = list(items) if isinstance(items, Iterable) else [items]
    if not all(isinstance(k, str) for k in items):
        raise TypeError("keywords must be a string or an iterable of strings")
    out = [_check_keyword(k.strip()) for k in items if k.strip()]
    if not out:
        raise ValueError("keywords must hold at least one non-empty keyword")
    repeated = sorted({k for k in out if out.count(k) > 1})
    if repeated:
        raise ValueError(f"keywords must be distinct, got {repeated} more than once")
    return out


def detokenize(text: str) -> str:
    """Glue hyphens and apostrophes that a WordPiece decode spaced out inside a word (``t - shirt``, ``don ' t``)."""
    return re.sub(r"(?<=\w) ?([-'’]) ?(?=\w)", r"\1", text)


def capitalize(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:]


def _suffix_s(word: str) -> str:
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


def _doubles_final(word: str) -> bool:
    return len(word) >= 3 and word[-1] not in _VOWELS + "wxy" and word[-2] in _VOWELS and word[-3] not in _VOWELS \
        and len(re.findall(f"[{_VOWELS}]+", word)) == 1


def _suffix_ed(word: str) -> str:
    if word.endswith("e"):
        return word + "d"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ied"
    return word + word[-1] + "ed" if _doubles_final(word) else word + "ed"


def _suffix_ing(word: str) -> str:
    if word.endswith("ie"):
        return word[:-2] + "ying"
    if word.endswith("e") and not word.endswith(("ee", "ye", "oe")) and len(word) > 2:
        return word[:-1] + "ing"
    return word + word[-1] + "ing" if _doubles_final(word) else word + "ing"


@functools.lru_cache(maxsize=1 << 16)
def inflections(word: str) -> tuple[str, ...]:
    """The word and its plausible English inflected forms (lemma first, no duplicates); kept per word, since the
    keyword target asks for the forms of every word of every sentence it scores."""
    lower = word.lower()
    if not lower.isalpha():
        return (word,)
    forms = [word, _suffix_s(lower), _suffix_ing(lower), *IRREGULAR.get(lower, [])]
    if lower not in IRREGULAR_PAST:
        forms.append(_suffix_ed(lower))
    return tuple(dict.fromkeys(forms))
