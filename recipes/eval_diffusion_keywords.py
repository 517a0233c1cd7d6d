"""Keyword-to-sentence on a CommonGen dev subset: the deletion-diffusion method (and optionally MH), side by side.

Metrics (one output sentence per concept set): keyword coverage (a concept counts when any of its inflections,
``textdiff.mcmc.keywords.inflections``, is a word of the output), corpus BLEU-4 against all references of the set
(lower-cased word tokens, brevity penalty, no smoothing), judge perplexity ``exp(mean token NLL)`` under SmolLM2-135M
(``textdiff.models.loading.load_lm``, EOS scored, its own tokenizer) with the mean unigram entropy of the outputs (§9),
and wall time per concept set. When ``recipes/eval_commongen.py`` (the MH engineer's recipe) provides
``coverage``/``bleu4`` functions, those are used instead, so both methods share one definition.

Example (2-core CPU):
    OMP_NUM_THREADS=1 python recipes/eval_diffusion_keywords.py --sets 50 --methods diffusion mh
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
COMMONGEN = REPO.parent / "shared" / "data" / "commongen"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def coverage(text: str, concepts: list[str]) -> float:
    """Fraction of concepts present in ``text`` in some inflected form."""
    from textdiff.mcmc.keywords import inflections

    present = set(words(text))
    return sum(any(form in present for form in [c] + inflections(c)) for c in concepts) / len(concepts)


def bleu4(hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002) with multiple references, closest-length brevity penalty."""
    matched, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        h, rs = words(hyp), [words(r) for r in refs]
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for n in range(1, 5):
            grams = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            best = Counter()
            for r in rs:
                best |= Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            matched[n - 1] += sum(min(c, best[g]) for g, c in grams.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / 4
    brevity = min(0.0, 1 - ref_len / max(hyp_len, 1))
    return 100 * math.exp(log_precision + brevity)


def unigram_entropy(text: str) -> float:
    counts = Counter(words(text))
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values()) if n else 0.0


def shared_metrics():
    """``(coverage, bleu4)`` from recipes/eval_commongen.py when it exists, else this file's definitions."""
    path = REPO / "recipes" / "eval_commongen.py"
    if path.exists():
        spec = importlib.util.spec_from_file_location("eval_commongen", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "coverage") and hasattr(module, "bleu4"):
            return module.coverage, module.bleu4, "recipes/eval_commongen.py"
    return coverage, bleu4, "recipes/eval_diffusion_keywords.py"


def load_sets(n: int) -> list[tuple[list[str], list[str]]]:
    """The first ``n`` concept sets of the dev split with all their references."""
    src = (COMMONGEN / "commongen.dev.src_alpha.txt").read_text().splitlines()
    tgt = (COMMONGEN / "commongen.dev.tgt.txt").read_text().splitlines()
    sets: dict[str, list[str]] = {}
    for concepts, ref in zip(src, tgt):
        sets.setdefault(concepts, []).append(ref)
    return [(c.split(), refs) for c, refs in list(sets.items())[:n]]


def run_diffusion(sets, args) -> tuple[list[str], float]:
    from transformers import AutoTokenizer

    from textdiff.models.insertion import InsertionModel
    from textdiff.udm.deletion import generate_from_keywords

    model = InsertionModel.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    outputs, started = [], time.time()
    for k, (concepts, _) in enumerate(sets):
        best = generate_from_keywords(model, tokenizer, concepts, 1, orders=args.orders,
                                      samples_per_order=args.samples_per_order, steps=args.steps,
                                      fill_mode=args.fill_mode, seed=args.seed + k)
        outputs.append(best[0].text)
    return outputs, (time.time() - started) / len(sets)


def run_mh(sets, args) -> tuple[list[str], float]:
    from textdiff.mcmc.generate import default_generator

    generator = default_generator(proposal=args.mh_proposal)
    outputs, started = [], time.time()
    for k, (concepts, _) in enumerate(sets):
        outputs.append(generator.generate(concepts, 1, steps=args.mh_steps, seed=args.seed + k)[0].text)
    return outputs, (time.time() - started) / len(sets)


def judge_perplexity(texts: list[str]) -> float:
    from textdiff.mcmc.targets import CausalLMScorer
    from textdiff.models.loading import load_lm

    scorer = CausalLMScorer(*load_lm())
    log_probs = scorer.log_prob_texts(texts)
    tokens = sum(len(ids) + 1 for ids in scorer.encode(texts))
    return math.exp(-float(log_probs.sum()) / tokens)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=50, help="number of dev concept sets (from the top)")
    parser.add_argument("--methods", nargs="+", default=["diffusion"], choices=["diffusion", "mh"])
    parser.add_argument("--model", default=str(REPO / "data/models/insertion"), help="insertion model folder")
    parser.add_argument("--orders", default="6", help="keyword orders per set: 'all', 'given' or a number")
    parser.add_argument("--samples-per-order", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12, help="reverse steps of the insertion chain")
    parser.add_argument("--fill-mode", default="iterative", choices=["oneshot", "iterative"])
    parser.add_argument("--mh-steps", type=int, default=200, help="MH steps per chain (mh method)")
    parser.add_argument("--mh-proposal", choices=["mlm", "lm"], default="mlm",
                        help="MH edit proposal: MiniLM MLM (needs data/models/minilm-mlm) or SmolLM2 top-K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write outputs and metrics as JSON here")
    args = parser.parse_args(argv)
    args.orders = args.orders if args.orders in ("all", "given") else int(args.orders)
    torch.set_num_threads(args.threads)
    sets = load_sets(args.sets)
    cover, bleu, source = shared_metrics()
    report = {"sets": len(sets), "metrics_from": source, "machine": "CPU", "methods": {}}
    runners = {"diffusion": run_diffusion, "mh": run_mh}
    for method in args.methods:
        outputs, seconds = runners[method](sets, args)
        report["methods"][method] = {
            "coverage": sum(cover(o, c) for o, (c, _) in zip(outputs, sets)) / len(sets),
            "bleu4": bleu(outputs, [refs for _, refs in sets]),
            "judge_ppl_smollm2": judge_perplexity(outputs),
            "unigram_entropy": sum(map(unigram_entropy, outputs)) / len(outputs),
            "seconds_per_set": seconds,
            "examples": [{"concepts": c, "output": o} for o, (c, _) in zip(outputs[:5], sets)],
        }
        print(json.dumps({method: {k: v for k, v in report["methods"][method].items() if k != "examples"}}), flush=True)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
