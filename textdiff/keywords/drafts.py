"""LM drafts as start states of the keyword chains (docs/mcmc.md#drafts-as-start-states).

The scoring LM, asked by the keyword set's instruction, writes fluent sentences that often miss keywords;
:func:`instruction_prefix` builds that prompt, :func:`sample_drafts` samples single-sentence drafts from it (one
batched ``generate`` call per set, seeded explicitly), and :func:`locate_keywords` / :func:`blocks_in_order` turn a
draft into a valid chain state (every keyword present is a protected block; the generator inserts the missing ones).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from textdiff import checks

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


def single_sentence(text: str) -> str | None:
    """The draft without its final ``.``/``!``/``?`` when it is exactly one complete sentence, else ``None``."""
    text = text.strip()
    match = _SENTENCE.fullmatch(text)
    if match is None or not text.endswith((".", "!", "?")):
        return None
    return text[:-1].strip() or None


@torch.no_grad()
def sample_drafts(lm, tokenizer, prompt: Sequence[int], count: int, seed: int, *, max_new_tokens: int = 32,
                  temperature: float = 0.7, top_p: float = 0.95) -> list[str]:
    """``count`` distinct single-sentence drafts (final punctuation removed) sampled from ``lm`` after ``prompt``
    in one batched ``generate`` call; the draws depend only on ``seed`` (the global torch RNG is restored)."""
    checks.positive_int("count", count)
    device = next(lm.parameters()).device
    ids = torch.tensor([list(prompt)], device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                          temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                          num_return_sequences=count, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return list(dict.fromkeys(s for s in map(single_sentence, texts) if s is not None))


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
