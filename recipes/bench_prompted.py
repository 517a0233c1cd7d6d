"""Benchmark: rows after prompts (docs/mcmc.md#rows-after-prompts), the model's own forward on a KV cache of each
prompt (``PlainLM``) against the prompts' keys and values stored once and the linear layers on packed tokens
(``PromptedLM``), side by side in one run.

Two workloads of ``textdiff generate``, with the real instruction prompts of the first ``--sets`` CommonGen dev sets:
(1) scoring: ``--rows`` sentences of 8–17 tokens + EOS, spread over the prompts (``CausalLMScorer.log_prob_ids``);
(2) decoding: ``--drafts`` drafts per prompt, 32 steps (``sample_drafts``). Prints seconds, the ratio, the largest
score difference between the engines, and the linear layers' FLOP rate (the head only where used).

    python recipes/bench_prompted.py [--sets 8] [--rows 256] [--drafts 8] [--device cpu] [--random-weights]

``--random-weights`` builds SmolLM2-135M from its config (``recipes/assets/smollm2-135m-instruct``) with random
weights, for a machine without the shipped weights (timings do not depend on them).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import transformers

from textdiff.keywords.drafts import instruction_prefix, sample_drafts
from textdiff.mcmc.prompted import PlainLM, PromptedLM
from textdiff.mcmc.targets import CausalLMScorer
from textdiff.models import load_lm

ROOT = Path(__file__).resolve().parents[1]
LM_CONFIG = ROOT / "recipes" / "assets" / "smollm2-135m-instruct"
COMMONGEN = ROOT / "data" / "commongen" / "commongen.dev.src_alpha.txt"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(function, device: str, repeats: int = 3) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up, and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def linear_flops(model, tokens: int, head_positions: int) -> float:
    """FLOPs of the linear layers on ``tokens`` tokens plus the output head at ``head_positions``."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    per_layer = config.hidden_size * (2 * config.hidden_size + 2 * config.num_key_value_heads * head_dim
                                      + 3 * config.intermediate_size)
    return 2 * (tokens * per_layer * config.num_hidden_layers + head_positions * config.hidden_size
                * config.vocab_size)


def compare(lm, tokenizer, prompts: list[list[int]], rows: int, drafts: int, device: str) -> list[dict]:
    """Scoring and decoding with each engine; one row of numbers per workload and engine."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 18, (rows,), generator=generator).tolist()
    seqs = [torch.randint(100, 30000, (n,), generator=generator).tolist() for n in lengths]
    owners = [prompts[i % len(prompts)] for i in range(rows)]
    tokens = sum(n + 1 for n in lengths)
    out, scores = [], {}
    for name, engine in (("PlainLM (model's own forward, KV cache)", PlainLM(lm)),
                         ("PromptedLM (prompt stored once, packed rows)", PromptedLM(lm))):
        scorer = CausalLMScorer(lm, tokenizer)
        scorer.engine = engine
        seconds, scores[name] = timed(partial(scorer.log_prob_ids, seqs, owners), device)
        out.append({"workload": f"scoring {rows} rows ({tokens} tokens) after {len(prompts)} prompts",
                    "engine": name, "seconds": seconds,
                    "GFLOP/s": linear_flops(lm, tokens, tokens - rows) / seconds / 1e9})
        seconds, _ = timed(partial(sample_drafts, scorer, prompts, drafts, list(range(len(prompts)))), device, 1)
        out.append({"workload": f"decoding {drafts} drafts x {len(prompts)} prompts", "engine": name,
                    "seconds": seconds})
    first, second = scores.values()
    print(f"largest score difference between the engines: {(first - second).abs().max().item():.2e} nats")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=8)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--drafts", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-weights", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        name = None
        if args.random_weights:
            config = transformers.AutoConfig.from_pretrained(LM_CONFIG)
            transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
            transformers.AutoTokenizer.from_pretrained(LM_CONFIG).save_pretrained(tmp)
            name = tmp
        lm, tokenizer = load_lm(name, device=args.device)
    sets = list(dict.fromkeys(COMMONGEN.read_text().splitlines()))[: args.sets]
    prompts = [instruction_prefix(tokenizer, s.split()) for s in sets]
    print(f"device {args.device}, dtype {next(lm.parameters()).dtype}, torch threads {torch.get_num_threads()}, "
          f"SmolLM2-135M ({'random' if args.random_weights else 'shipped'} weights), prompts of "
          f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens")
    rows = compare(lm, tokenizer, prompts, args.rows, args.drafts, args.device)
    print("| workload | engine | seconds | ratio | linear layers |\n|---|---|---|---|---|")
    first: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: r["workload"]):
        base = first.setdefault(row["workload"], row["seconds"])
        rate = f"{row['GFLOP/s']:.0f} GFLOP/s" if "GFLOP/s" in row else ""
        print(f"| {row['workload']} | {row['engine']} | {row['seconds']:.3f} | {base / row['seconds']:.2f}x | {rate} |")


if __name__ == "__main__":
    main()
