"""Evaluate ``textdiff generate`` on CommonGen dev concept sets (data/commongen, MIT licence).

For every concept set: one sentence (``--inflect`` on, as CommonGen allows inflected concepts), and the metrics
* coverage: share of concepts present as a word of the output, any form from ``textdiff.keywords.inflections``;
* corpus BLEU-4 against all references of each set, computed by sacrebleu (default settings: 13a tokenisation);
* scorer perplexity: SmolLM2 with the target's prompt (the model the sampler optimises);
* judge perplexities: (a) SmolLM2 conditioned on BOS only (a different prompt; same weights, so not independent),
  (b) MiniLM MLM pseudo-perplexity (each word piece masked in turn);
* wall time per set.
The human references (first reference of each set) are scored by the same judges as a yardstick.

    python recipes/eval_commongen.py [--sets 40] [--steps 200] [--chains 4] [--seed 0] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import sacrebleu
import torch
from tqdm.auto import tqdm

from textdiff.keywords import KeywordGenerator, inflections
from textdiff.mcmc.targets import CausalLMScorer
from textdiff.metrics import perplexity
from textdiff.models import load_lm, load_mlm

DATA = Path(__file__).resolve().parents[1] / "data" / "commongen"


def load_sets(split: str = "dev") -> list[tuple[list[str], list[str]]]:
    """``(concepts, references)`` per distinct concept set, in file order."""
    sources = (DATA / f"commongen.{split}.src_alpha.txt").read_text().splitlines()
    targets = (DATA / f"commongen.{split}.tgt.txt").read_text().splitlines()
    grouped: dict[str, list[str]] = {}
    for source, target in zip(sources, targets):
        grouped.setdefault(source.strip(), []).append(target.strip())
    return [(source.split(), refs) for source, refs in grouped.items()]


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def coverage(text: str, concepts: list[str]) -> float:
    present = set(words(text))
    return sum(any(form.lower() in present for form in inflections(c)) for c in concepts) / len(concepts)


def corpus_bleu(hypotheses: list[str], references: list[list[str]]) -> float:
    """sacrebleu corpus BLEU-4 against all references of each set (default 13a tokenisation, mixed case), in
    [0, 100]. Sets with fewer references repeat their first one, which leaves BLEU unchanged."""
    width = max(map(len, references))
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
    return sacrebleu.corpus_bleu(hypotheses, streams).score


@torch.no_grad()
def pseudo_perplexity(mlm, tokenizer, texts: list[str]) -> float:
    """MLM pseudo-perplexity: every word piece masked in turn, ``exp(-mean log p(token | rest))``."""
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        n = len(ids) - 2
        batch = ids.repeat(n, 1)
        positions = torch.arange(1, n + 1)
        batch[torch.arange(n), positions] = tokenizer.mask_token_id
        logits = mlm(input_ids=batch.to(mlm.device)).logits[torch.arange(n), positions].double().cpu()
        total += float(torch.log_softmax(logits, -1)[torch.arange(n), ids[1:-1]].sum())
        count += n
    return math.exp(-total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=40, help="concept sets, spread evenly over the dev set")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mlm", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-inflect", action="store_true", help="keep the concepts' lemma forms")
    parser.add_argument("--out", default=None, help="write one JSON line per set here")
    args = parser.parse_args()

    sets = load_sets("dev")
    picked = sets[:: max(1, len(sets) // args.sets)][: args.sets]
    lm, lm_tok = load_lm(None, device=args.device)
    mlm, mlm_tok = load_mlm(args.mlm, device=args.device)
    gen = KeywordGenerator(lm, lm_tok, mlm, mlm_tok)
    hypotheses, rows = [], []
    start = time.perf_counter()
    for k, (concepts, refs) in enumerate(tqdm(picked, desc="concept sets")):
        t0 = time.perf_counter()
        sentence = gen.generate(concepts, steps=args.steps, chains=args.chains, seed=args.seed + k,
                                inflect=not args.no_inflect)[0]
        rows.append({"concepts": concepts, "output": sentence.text, "coverage": coverage(sentence.text, concepts),
                     "seconds": time.perf_counter() - t0, "references": refs})
        hypotheses.append(sentence.text)
    wall = time.perf_counter() - start

    judge_bos = CausalLMScorer(lm, lm_tok)
    references = [refs for _, refs in picked]
    first_refs = [refs[0] for refs in references]
    print(f"CommonGen dev: {len(picked)} of {len(sets)} concept sets; steps={args.steps} chains={args.chains} "
          f"inflect={not args.no_inflect} device={args.device} threads={torch.get_num_threads()}")
    print(f"{'':22s} {'coverage':>8s} {'BLEU-4':>7s} {'scorer PPL':>10s} {'judge PPL (BOS)':>15s} "
          f"{'MLM pseudo-PPL':>14s}")
    for name, texts in (("textdiff generate", hypotheses), ("human reference #1", first_refs)):
        cov = sum(coverage(t, c) for t, (c, _) in zip(texts, picked)) / len(texts)
        bleu = corpus_bleu(texts, references if name.startswith("textdiff") else
                           [refs[1:] or refs for refs in references])
        print(f"{name:22s} {100 * cov:7.1f}% {bleu:7.2f} {perplexity(gen.scorer, texts):10.1f} "
              f"{perplexity(judge_bos, texts):15.1f} {pseudo_perplexity(mlm, mlm_tok, texts):14.1f}")
    print(f"wall time {wall:.0f} s, {wall / len(picked):.1f} s per set")
    print("(reference BLEU: reference #1 against the other references of its set)")
    for row in rows[:8]:
        print(f"  {' '.join(row['concepts']):32s} -> {row['output']}")
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
