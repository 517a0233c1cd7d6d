"""Keyword-to-sentence with the deletion diffusion (docs/deletion.md#conditioning-on-keywords) on CommonGen dev, MH's
metrics and sets.

The concept sets (spread evenly over dev), coverage, corpus BLEU-4 and perplexity come from
``recipes/eval_commongen.py`` (the MH recipe), imported, so the two methods are measured identically: run both with
the same ``--sets`` to compare. Judge: SmolLM2-135M conditioned on BOS only (EOS scored). Also reported: mean
per-sentence unigram entropy (docs/numerics.md#reporting-sample-quality), mean length in words, wall time per set. One
sentence per set: the best of ``orders × samples_per_order`` chains by the token head's pseudo-log-likelihood.

    OMP_NUM_THREADS=1 python recipes/eval_diffusion_keywords.py --sets 40 --fill-mode oneshot
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from textdiff.metrics import unigram_entropy

REPO = Path(__file__).resolve().parents[1]


def mh_recipe():
    """``recipes/eval_commongen.py`` as a module (its metric functions and set loader)."""
    spec = importlib.util.spec_from_file_location("eval_commongen", REPO / "recipes" / "eval_commongen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=40, help="concept sets, spread evenly over the dev set (as MH)")
    parser.add_argument("--model", default=None, help="insertion model folder (default: data/models/insertion)")
    parser.add_argument("--orders", default="6", help="keyword orders per set: 'all', 'given' or a number")
    parser.add_argument("--samples-per-order", type=int, default=4, help="reverse chains per keyword order")
    parser.add_argument("--steps", type=int, default=12, help="reverse steps from t* to 0")
    parser.add_argument("--fill-mode", default="iterative", choices=["oneshot", "iterative"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the per-set outputs and the summary as JSON here")
    args = parser.parse_args(argv)
    orders = args.orders if args.orders in ("all", "given") else int(args.orders)
    torch.set_num_threads(args.threads)

    from textdiff.keywords import generate_from_keywords
    from textdiff.mcmc.targets import CausalLMScorer
    from textdiff.models import load_insertion, load_lm

    mh = mh_recipe()
    sets = mh.load_sets("dev")
    picked = sets[:: max(1, len(sets) // args.sets)][: args.sets]
    model, tokenizer = load_insertion(args.model)
    outputs, rows = [], []
    start = time.perf_counter()
    for k, (concepts, _) in enumerate(tqdm(picked, desc="concept sets")):
        t0 = time.perf_counter()
        best = generate_from_keywords(model, tokenizer, concepts, 1, orders=orders,
                                      samples_per_order=args.samples_per_order, steps=args.steps,
                                      fill_mode=args.fill_mode, seed=args.seed + k)[0]
        outputs.append(best.text)
        rows.append({"concepts": concepts, "output": best.text, "order": best.keywords,
                     "seconds": time.perf_counter() - t0})
    wall = time.perf_counter() - start
    judge = CausalLMScorer(*load_lm())
    summary = {
        "sets": len(picked),
        "settings": dict(orders=args.orders, samples_per_order=args.samples_per_order, steps=args.steps,
                         fill_mode=args.fill_mode, x0_mode="sample", temperature=1.0, threads=args.threads),
        "coverage": sum(mh.coverage(o, c) for o, (c, _) in zip(outputs, picked)) / len(picked),
        "bleu4": mh.corpus_bleu(outputs, [refs for _, refs in picked]),
        "judge_ppl_smollm2_bos": mh.perplexity(judge, outputs),
        "unigram_entropy": sum(unigram_entropy(mh.words(o)) for o in outputs) / len(outputs),
        "mean_words": sum(len(o.split()) for o in outputs) / len(outputs),
        "seconds_per_set": wall / len(picked),
    }
    print(json.dumps(summary, indent=2))
    for row in rows[:8]:
        print(f"  {' '.join(row['concepts']):32s} -> {row['output']}")
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
