"""Benchmark: rows after prompts (docs/mcmc.md#rows-after-prompts), the model's own forward on a KV cache of each
prompt (``PlainLM``) against the prompts' keys and values stored once, the linear layers on packed tokens and every
token after a prompt computed once (``PromptedLM`` and its token tree), side by side in one run.

Three workloads of ``textdiff generate``, with the real instruction prompts of the first ``--sets`` CommonGen dev sets:
(1) scoring new rows: ``--rows`` sentences of 8–17 tokens + EOS, spread over the prompts, on an engine that has seen
none of them (``CausalLMScorer.log_prob_ids``); (2) scoring proposals: the same rows once scored, then each with one
token replaced at a uniform position, as an MH step scores them; (3) decoding: ``--drafts`` drafts per prompt, 32
steps (``sample_drafts``). Prints seconds, the ratio, the largest score difference between the engines, and the rate
of useful linear-layer FLOPs (the head only where used; for proposals, as if every token were computed).

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


def timed(make, run, device: str, repeats: int = 3) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls ``run(make())`` after one warm-up (``make`` untimed), and the last result."""
    result = run(make())
    times = []
    for _ in range(repeats):
        state = make()
        synchronize(device)
        start = time.perf_counter()
        result = run(state)
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
    edited = []
    for seq in seqs:
        at = int(torch.randint(0, len(seq), (1,), generator=generator))
        edited.append(seq[:at] + [int(torch.randint(100, 30000, (1,), generator=generator))] + seq[at + 1:])
    tokens = sum(n + 1 for n in lengths)
    flops = linear_flops(lm, tokens, tokens - rows)
    out, scores = [], {}
    for name, engine_class in (("PlainLM (model's own forward, KV cache)", PlainLM),
                               ("PromptedLM (prompt stored once, packed rows, token tree)", PromptedLM)):
        def fresh(seen=(), engine_class=engine_class):
            scorer = CausalLMScorer(lm, tokenizer)
            scorer.engine = engine_class(lm)
            if seen:
                scorer.log_prob_ids(seen, owners)
            return scorer

        seconds, scores[name] = timed(fresh, lambda scorer: scorer.log_prob_ids(seqs, owners), device)
        out.append({"workload": f"scoring {rows} new rows ({tokens} tokens) after {len(prompts)} prompts",
                    "engine": name, "seconds": seconds, "GFLOP/s": flops / seconds / 1e9})
        seconds, _ = timed(partial(fresh, seqs), lambda scorer: scorer.log_prob_ids(edited, owners), device)
        out.append({"workload": f"scoring {rows} proposals, one token of a scored row replaced", "engine": name,
                    "seconds": seconds, "GFLOP/s": flops / seconds / 1e9})
        seconds, _ = timed(fresh, partial(sample_drafts, prompts=prompts, count=drafts,
                                          seeds=list(range(len(prompts)))), device, 1)
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
