"""Measure guidance: how often guided samples get the requested label, and what it costs in fluency.

For each sampler and guidance scale (γ for classifier guidance, w for classifier-free guidance) the recipe draws
``--n`` samples per label and reports
* control: the share of samples that the independent evaluation classifier (``recipes/eval_classifier.py``: a frozen
  all-MiniLM-L6-v2 encoder + logistic head, sharing neither architecture nor weights with the guidance models)
  assigns to the requested label;
* fluency: generative perplexity under SmolLM2-135M (BOS prompt, the texts lower-cased as the samplers write them),
  and its ratio to the unguided (scale 0) perplexity of the same sampler;
* for ``mh`` (keywords + label): keyword coverage;
* seconds per sample.

Samplers: ``mask`` (masking diffusion, one-token steps, classifier candidate reweighting over the top-16
candidates), ``mask-top16`` (unguided, the same top-16 restriction: run it at scale 0 only), ``mask-cfg`` (the
label-conditional masked LM with classifier-free guidance), ``delete`` (deletion diffusion, fill candidates
reweighted), ``mh`` (``textdiff generate`` with keywords, the classifier term in the target), ``gibbs``
(MH-corrected Gibbs with the tilted pseudo-likelihood energy).

    python recipes/eval_guidance.py --task sentiment --samplers mask mask-cfg --scales 0 1 2 4 8 --n 24 \\
        --out results/guidance.jsonl
    python recipes/eval_guidance.py --task sentiment --samplers mh --scales 0 2 8 --n 4 --out results/guidance.jsonl
    python recipes/eval_guidance.py --task sentiment --samplers --out results/guidance.jsonl \\
        --plot docs/img/guidance_sentiment.png          # table and plot of every row measured so far
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from eval_classifier import EvalClassifier

from textdiff.defaults import GUIDANCE_TASKS
from textdiff.keywords import generate_many, inflections
from textdiff.mcmc.targets import CausalLMScorer
from textdiff.metrics import perplexity
from textdiff.models import load_lm
from textdiff.registry import Registry
from textdiff.sampling import Guidance, sample_texts
from textdiff.udm import X0Draw

SAMPLERS = Registry("sampler")
MH_STEPS = 100  # --mh-steps
#: neutral concept sets for the keyword sampler (``mh``): a label can be written around any of them
KEYWORD_SETS = ["film story", "actor role", "music scene", "director plot", "book character", "day city",
                "ending audience", "dialogue camera"]


@SAMPLERS.register("mask")
def _mask(label: str, scale: float, n: int, seed: int, length: int) -> list[str]:
    guidance = Guidance(label=label, scale=scale) if scale > 0 else None
    return sample_texts(n, length=length, guidance=guidance, seed=seed)[0]


@SAMPLERS.register("mask-top16")
def _mask_top16(label: str, scale: float, n: int, seed: int, length: int) -> list[str]:
    """Unguided, but drawn from the same top-16 candidates that guidance reweights: separates the effect of the
    candidate restriction on fluency from that of the tilt."""
    return sample_texts(n, length=length, draw=X0Draw(top_k=16), seed=seed)[0]


@SAMPLERS.register("mask-cfg")
def _mask_cfg(label: str, scale: float, n: int, seed: int, length: int) -> list[str]:
    return sample_texts(n, length=length, guidance=Guidance(label=label, scale=scale, kind="cfg"), seed=seed)[0]


@SAMPLERS.register("delete")
def _delete(label: str, scale: float, n: int, seed: int, length: int) -> list[str]:
    guidance = Guidance(label=label, scale=scale) if scale > 0 else None
    return sample_texts(n, length=length, process="delete", guidance=guidance, seed=seed)[0]


def mh_sets(n: int) -> list[str]:
    """The keyword sets of the ``mh`` sampler: the first ``min(n, 8)`` of :data:`KEYWORD_SETS` (MH costs ≈ 10 s per
    set on 2 CPU cores)."""
    return KEYWORD_SETS[: min(n, len(KEYWORD_SETS))]


@SAMPLERS.register("mh")
def _mh(label: str, scale: float, n: int, seed: int, length: int) -> list[str]:
    guidance = Guidance(label=label, scale=scale) if scale > 0 else None
    results = generate_many(mh_sets(n), 1, steps=MH_STEPS, chains=4, seed=seed, guidance=guidance)
    return [result[0].text if isinstance(result, list) else "" for result in results]


@SAMPLERS.register("gibbs")
def _gibbs(label: str, scale: float, n: int, seed: int, length: int) -> list[str]:
    from textdiff.mcmc.gibbs import gibbs_sample, masked_init, pseudo_log_likelihood_energy
    from textdiff.models import load_mlm
    from textdiff.support import TokenSupport

    model, tokenizer = load_mlm()
    support = TokenSupport.from_tokenizer(tokenizer, model.config.vocab_size)
    energy = pseudo_log_likelihood_energy(model, support)
    if scale > 0:
        energy = Guidance(label=label, scale=scale).energy(energy, tokenizer)
    steps = 8 * length
    result = gibbs_sample(model, masked_init(tokenizer, [length] * n), support, steps=steps, burn_in=steps - 1,
                          seed=seed, energy=energy)
    return [tokenizer.decode(chain[-1], skip_special_tokens=True) for chain in result.samples]


def coverage(texts: list[str], sets: list[str]) -> float:
    """Share of keyword sets whose every keyword (any inflection) is a word of the text."""
    covered = 0
    for text, keywords in zip(texts, sets):
        words = set(text.lower().replace(".", " ").replace(",", " ").split())
        covered += all(words & set(inflections(k)) for k in keywords.split())
    return covered / len(texts)


def evaluate(sampler: Callable, name: str, task: str, scales: list[float], n: int, seed: int, length: int,
             judge: EvalClassifier, lm_scorer: CausalLMScorer, out: Path | None) -> list[dict]:
    """Rows of one sampler, each printed and (``out``) appended to a JSONL file as soon as it is measured."""
    rows = []
    for scale in scales:
        for label in GUIDANCE_TASKS[task]:
            start = time.perf_counter()
            texts = sampler(label, scale, n, seed, length)
            seconds = (time.perf_counter() - start) / len(texts)
            predicted = judge.log_probs([t or "." for t in texts]).argmax(-1)
            row = {"sampler": name, "task": task, "label": label, "scale": scale, "n": len(texts),
                   "control": float((predicted == judge.labels.index(label)).double().mean()),
                   "ppl": perplexity(lm_scorer, [t.lower() for t in texts]), "seconds_per_sample": seconds,
                   "examples": texts[:3]}
            if name == "mh":
                row["coverage"] = coverage(texts, mh_sets(n))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "examples"}), flush=True)
            if out is not None:
                with out.open("a", encoding="utf-8") as stream:
                    stream.write(json.dumps(row) + "\n")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per sampler and scale: mean control over labels, perplexity and its ratio to the sampler's scale-0 value."""
    out = []
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == sampler]
        base = [r for r in mine if r["scale"] == 0]
        base_ppl = math.exp(sum(math.log(r["ppl"]) for r in base) / len(base)) if base else float("nan")
        for scale in dict.fromkeys(r["scale"] for r in mine):
            at = [r for r in mine if r["scale"] == scale]
            ppl = math.exp(sum(math.log(r["ppl"]) for r in at) / len(at))
            entry = {"sampler": sampler, "scale": scale, "control": sum(r["control"] for r in at) / len(at),
                     "ppl": ppl, "ppl_ratio": ppl / base_ppl,
                     "seconds_per_sample": sum(r["seconds_per_sample"] for r in at) / len(at)}
            if "coverage" in at[0]:
                entry["coverage"] = sum(r["coverage"] for r in at) / len(at)
            out.append(entry)
    return out


def table(summary: list[dict], task: str) -> str:
    lines = [f"| sampler ({task}) | scale | control | gen-PPL | PPL ratio | s/sample |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        extra = f" (coverage {100 * s['coverage']:.0f} %)" if "coverage" in s else ""
        lines.append(f"| {s['sampler']}{extra} | {s['scale']:g} | {100 * s['control']:.1f} % | {s['ppl']:.1f} | "
                     f"{s['ppl_ratio']:.2f} | {s['seconds_per_sample']:.2f} |")
    return "\n".join(lines)


def plot(summary: list[dict], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for sampler in dict.fromkeys(s["sampler"] for s in summary):
        points = [s for s in summary if s["sampler"] == sampler]
        scales = [s["scale"] for s in points]
        left.plot(scales, [100 * s["control"] for s in points], marker="o", label=sampler)
        right.plot(scales, [s["ppl_ratio"] for s in points], marker="o", label=sampler)
    left.axhline(90, color="grey", linestyle=":", label="target 90 %")
    right.axhline(1.5, color="grey", linestyle=":", label="budget 1.5x")
    left.set(xlabel="guidance scale (γ, or w for cfg)", ylabel="% with the requested label",
             title=f"control ({task}, independent judge)")
    right.set(xlabel="guidance scale (γ, or w for cfg)", ylabel="gen-PPL / unguided gen-PPL",
              title="fluency cost (SmolLM2-135M)")
    left.legend()
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    global MH_STEPS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--task", choices=list(GUIDANCE_TASKS), default="sentiment")
    parser.add_argument("--samplers", nargs="*", choices=list(SAMPLERS), default=["mask", "mask-cfg", "mh"])
    parser.add_argument("--scales", nargs="+", type=float, default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--n", type=int, default=32, help="samples per label and scale")
    parser.add_argument("--length", type=int, default=20, help="tokens per sample (diffusion, Gibbs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mh-steps", type=int, default=MH_STEPS, help="MH steps per chain (mh sampler)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSONL file: every measured row is appended; the table and plot cover all its rows of "
                        "--task (so samplers can be measured in separate runs)")
    parser.add_argument("--plot", type=Path, default=None, help="write the control / fluency curves as PNG here")
    args = parser.parse_args()
    if args.n < 1 or any(s < 0 or not math.isfinite(s) for s in args.scales):
        parser.error("--n must be >= 1 and --scales finite and >= 0")
    MH_STEPS = args.mh_steps
    rows = []
    if args.samplers:
        judge = EvalClassifier.load(args.task)
        lm, lm_tokenizer = load_lm()
        lm_scorer = CausalLMScorer(lm, lm_tokenizer)
        for name in args.samplers:
            rows += evaluate(SAMPLERS[name], name, args.task, args.scales, args.n, args.seed, args.length, judge,
                             lm_scorer, args.out)
    if args.out is not None and args.out.exists():
        rows = [row for row in map(json.loads, args.out.read_text(encoding="utf-8").splitlines())
                if row["task"] == args.task]
    summary = summarise(rows)
    print(table(summary, args.task))
    if args.plot:
        plot(summary, args.task, args.plot)


if __name__ == "__main__":
    main()
