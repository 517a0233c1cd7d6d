"""LM drafts as start states of the keyword chains (docs/mcmc.md#drafts-as-start-states).

The scoring LM, asked by the keyword set's instruction, writes fluent sentences that often miss keywords;
:func:`instruction_prefix` builds that prompt, :func:`sample_drafts` samples single-sentence drafts from it (the
drafts of many sets in one batched decoding loop, each set from its own seeded generator), and
:func:`locate_keywords` / :func:`blocks_in_order` turn a draft into a valid chain state (every keyword present is a
protected block; the generator inserts the missing ones).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from textdiff import checks, rng
from textdiff.mcmc.prompted import PlainDecoding, Prompt
from textdiff.mcmc.targets import CausalLMScorer
from textdiff.padding import by_width

#: the user turn naming the concepts; ``{keywords}`` is replaced by the comma-separated keywords
INSTRUCTION = "Write a short sentence using these words: {keywords}."
#: worked examples shown as earlier turns (none is a CommonGen dev set): they show a short, plain sentence as the
#: answer, which a list of the words or a flowery paragraph is not (docs/mcmc.md#keyword-conditioned-target)
EXAMPLES = (("knife, bread, cut", "She cuts the bread with a knife."),
            ("walk, umbrella, rain", "A man walks in the rain with an umbrella."),
            ("throw, child, ball", "The child throws the ball to his father."))
_SENTENCE = re.compile(r"[^.!?\n]*[A-Za-z][^.!?\n]*[.!?]?")


def instruction_prefix(tokenizer, words: Sequence[str], instruction: str = INSTRUCTION,
                       examples: Sequence[tuple[str, str]] = EXAMPLES) -> list[int]:
    """Prompt ids for a keyword set: the chat template with the ``examples`` as earlier user / assistant turns, a
    user turn naming the words, then the assistant turn start (the same turns as lines for an LM without a chat
    template)."""
    if "{keywords}" not in instruction:
        raise ValueError(f"instruction must contain '{{keywords}}', got {instruction!r}")
    turns = [turn for keywords, answer in examples for turn in (instruction.format(keywords=keywords), answer)]
    turns.append(instruction.format(keywords=", ".join(words)))
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": ("user", "assistant")[i % 2], "content": turn} for i, turn in enumerate(turns)]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "".join(turn + "\n" for turn in turns)
    return tokenizer.encode(text, add_special_tokens=False)


def instruction_head(tokenizer, instruction: str = INSTRUCTION,
                     examples: Sequence[tuple[str, str]] = EXAMPLES) -> list[int]:
    """The ids every keyword set's :func:`instruction_prefix` starts with (the worked examples and the user turn up to
    the keywords): the common start of the prompts of two sets without a word in common."""
    first, second = (instruction_prefix(tokenizer, [word], instruction, examples) for word in ("dog", "sky"))
    same = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))
    return first[:same]


def single_sentence(text: str) -> str | None:
    """The draft without its final ``.``/``!``/``?`` when it is exactly one complete sentence, else ``None``."""
    text = text.strip()
    match = _SENTENCE.fullmatch(text)
    if match is None or not text.endswith((".", "!", "?")):
        return None
    return text[:-1].strip() or None


def sample_drafts(scorer: CausalLMScorer, prompts: Sequence[Sequence[int]], count: int, seeds: Sequence[int], *,
                  max_new_tokens: int = 32, temperature: float = 0.7, top_p: float = 0.95) -> list[list[str]]:
    """Per prompt, its distinct single-sentence drafts (final punctuation removed) among ``count`` sampled from the
    scorer's LM (temperature, then nucleus ``top_p``; float64 draws). Each prompt runs once, through the scorer's
    cache of prompts (which scores the same prompts afterwards); its drafts decode after it together with the other
    prompts' of the same bucketed width, each prompt's tokens drawn from a generator seeded with its seed, so a
    prompt's drafts do not depend on the other prompts of the call."""
    checks.positive_int("count", count)
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds must hold one seed per prompt, got {len(seeds)} for {len(prompts)}")
    drafts: list[list[str]] = [[] for _ in prompts]
    for _, group in by_width([len(p) for p in prompts]):
        texts = _decode(scorer, [scorer.prompt(prompts[i]) for i in group], count, [seeds[i] for i in group],
                        max_new_tokens, temperature, top_p)
        for i, rows in zip(group, texts):
            drafts[i] = list(dict.fromkeys(s for s in map(single_sentence, rows) if s is not None))
    return drafts


@torch.no_grad()
def _decode(scorer: CausalLMScorer, prompts: list[Prompt], count: int, seeds: list[int], max_new_tokens: int,
            temperature: float, top_p: float) -> list[list[str]]:
    """``count`` sampled continuations of each prompt, until EOS or ``max_new_tokens``. A row that has drawn EOS
    leaves the decoding, so a prompt's generator draws for its own unfinished rows only, whatever the other prompts
    do."""
    device, eos = scorer.engine.device, scorer.eos_id
    decoding = PlainDecoding(scorer.model, [prompt for prompt in prompts for _ in range(count)])
    generators = [rng.make_generator(seed, device=device) for seed in seeds]
    logits = decoding.first()  # [rows, V]: the prompts' next-token log-probabilities
    drawn = torch.full((len(prompts) * count, max_new_tokens), eos, dtype=torch.long, device=device)
    alive = torch.arange(len(drawn), device=device)  # the rows still decoding, in row order
    sizes = [count] * len(prompts)  # unfinished rows per prompt
    for step in range(max_new_tokens):
        u = torch.cat([rng.uniform((size,), g) for g, size in zip(generators, sizes) if size])  # [alive]
        token = rng.sample_nucleus(logits.double() / temperature, u, top_p)  # [alive]
        drawn[alive, step] = token
        going = token != eos
        if not bool(going.all()):
            keep = going.nonzero()[:, 0]
            if len(keep) == 0:
                break
            alive, token = alive[keep], token[keep]
            decoding.keep(keep)
            sizes = torch.bincount(alive // count, minlength=len(prompts)).tolist()
        if step + 1 < max_new_tokens:
            logits = decoding.step(token)
    texts = scorer.tokenizer.batch_decode(drawn, skip_special_tokens=True)
    return [texts[g * count:(g + 1) * count] for g in range(len(prompts))]


def locate_keywords(tokens: Sequence[int], forms: Sequence[Sequence[tuple[int, ...]]],
                    continuation: frozenset[int]) -> list[tuple[int, tuple[int, ...]] | None]:
    """Per keyword, ``(start, span)`` of its first whole-word occurrence (any of its ``forms``) that overlaps no
    earlier keyword's, or ``None`` when it is missing."""
    taken: set[int] = set()
    found: list[tuple[int, tuple[int, ...]] | None] = []
    for spans in forms:
        hits = [(start, span) for span in spans for start in range(len(tokens) - len(span) + 1)
                if tuple(tokens[start:start + len(span)]) == span and tokens[start] not in continuation
                and (start + len(span) == len(tokens) or tokens[start + len(span)] not in continuation)
                and not taken & set(range(start, start + len(span)))]
        hit = min(hits, default=None)
        if hit is not None:
            taken.update(range(hit[0], hit[0] + len(hit[1])))
        found.append(hit)
    return found


def blocks_in_order(blocks: Sequence[int]) -> tuple[int, ...]:
    """Keyword block indices renumbered 0, 1, … in sentence order (what ``keyword_spans`` and ``N_K`` read)."""
    order: dict[int, int] = {}
    return tuple(-1 if b < 0 else order.setdefault(b, len(order)) for b in blocks)
