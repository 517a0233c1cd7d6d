"""Benchmark: textdiff's batched exact MH vs a faithful CGMH-style loop, and the sampler's overhead.

Side by side in one run, on the same models (SmolLM2-135M scorer; MiniLM MLM proposal):

1. accepted edits per second of
   * textdiff MH, B chains, MLM proposal (one batched MLM pass + one batched LM scoring per step);
   * textdiff MH, B chains, causal-LM proposal (top-K prefix candidates, all re-scored through the LM's engine of rows
     after a prompt: the prefix once, each candidate only for its own token and the rest of the sentence);
   * a faithful CGMH-style loop (Su's ``gpt_cgmh.py``): one chain, top-K candidates from the prefix, each candidate
     sentence scored by its own forward pass, Su's acceptance ratios;
2. sampler overhead: total wall time of the textdiff MLM run vs the time spent inside model forwards and LM scoring.

    python recipes/bench_mcmc.py [--chains 8] [--steps 40] [--cgmh-steps 4] [--mlm DIR] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from textdiff import rng
from textdiff.keywords import KeywordGenerator
from textdiff.mcmc.mh import MOVES, State
from textdiff.models import load_lm, load_mlm

KEYWORDS = "dog frisbee catch"


class ForwardTimer:
    """Wall time spent inside the forward passes of the given modules and inside the wrapped methods (the LM scorer's,
    whose CPU engine runs the model's layers without calling the model); nested intervals count once."""

    def __init__(self, *modules):
        self.total, self._start, self._depth = 0.0, None, 0
        for module in modules:
            module.register_forward_pre_hook(lambda *_: self._enter())
            module.register_forward_hook(lambda *_: self._leave())

    def wrap(self, owner, name: str) -> None:
        method = getattr(owner, name)

        def timed(*args, **kwargs):
            self._enter()
            try:
                return method(*args, **kwargs)
            finally:
                self._leave()

        setattr(owner, name, timed)

    def _enter(self):
        if self._depth == 0:
            self._sync()
            self._start = time.perf_counter()
        self._depth += 1

    def _leave(self):
        self._depth -= 1
        if self._depth == 0:
            self._sync()
            self.total += time.perf_counter() - self._start

    @staticmethod
    def _sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def run_textdiff(gen: KeywordGenerator, chains: int, steps: int, seed: int) -> tuple[int, float]:
    """Accepted edits and wall time of ``gen.generate`` (constant temperature 1: plain sampling)."""
    start = time.perf_counter()
    result = gen.run(KEYWORDS, chains=chains, steps=steps, seed=seed, schedule="constant")
    return sum(result.accepted), time.perf_counter() - start


@torch.no_grad()
def sentence_log_prob(model, ids: list[int]) -> float:
    logits = model(torch.tensor([ids], device=model.device)).logits[0, :-1].double()
    return float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:], device=model.device)[:, None]).sum())


@torch.no_grad()
def run_cgmh(lm, tok, prefix: list[int], steps: int, top_k: int, gamma: float, seed: int) -> tuple[int, float]:
    """Su's loop: one chain, one forward per candidate sentence, Su's ratios (docs/mcmc.md#faithful-reference-modes)."""
    gen = rng.make_generator(seed)
    spans = [tuple(tok.encode(" " + w, add_special_tokens=False)) for w in KEYWORDS.split()]
    x = State.from_keywords(spans)
    end = tok.encode(".", add_special_tokens=False) + [tok.eos_token_id]

    def score(tokens):
        return gamma * sentence_log_prob(lm, prefix + list(tokens) + end)

    def candidates(tokens, slot, current=None):
        """Top-K next tokens after the prefix (the current token forced first), one forward per sentence."""
        next_lp = torch.log_softmax(lm(torch.tensor([prefix + list(tokens[:slot])])).logits[0, -1].double(), -1)
        cands = torch.topk(next_lp, top_k).indices.tolist()
        if current is not None:
            cands = [current] + [c for c in cands if c != current][: top_k - 1]
        scores = [sentence_log_prob(lm, prefix + list(tokens[:slot]) + [w] + list(tokens[slot + 1:]) + end)
                  for w in cands]
        return cands, torch.log_softmax(torch.tensor(scores, dtype=torch.float64), 0)

    log_pi, accepted = score(x.tokens), 0
    start = time.perf_counter()
    for _ in range(steps):
        kind = MOVES[int(rng.uniform((1,), gen)[0] * 3)]
        positions = x.insertion_slots() if kind == "insert" else x.free_positions()
        if not positions:
            continue
        i = positions[int(rng.uniform((1,), gen)[0] * len(positions))]
        t, b = x.tokens, x.blocks
        if kind == "insert":
            cands, lg = candidates(t[:i] + (0,) + t[i:], i)
            k = int(rng.sample_categorical(lg, gen))
            y, log_ratio = State(t[:i] + (cands[k],) + t[i:], b[:i] + (-1,) + b[i:]), -float(lg[k])
        else:
            cands, lg = candidates(t, i, current=t[i])
            if kind == "delete":
                y, log_ratio = State(t[:i] + t[i + 1:], b[:i] + b[i + 1:]), float(lg[0])
            else:
                k = int(rng.sample_categorical(lg, gen))
                y, log_ratio = State(t[:i] + (cands[k],) + t[i + 1:], b), float(lg[0] - lg[k])
        log_pi_y = score(y.tokens)
        if float(rng.log_uniform((1,), gen)) < min(0.0, log_pi_y - log_pi + log_ratio):
            x, log_pi, accepted = y, log_pi_y, accepted + 1
    return accepted, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lm-steps", type=int, default=8, help="steps of the batched causal-LM-proposal run")
    parser.add_argument("--cgmh-steps", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--mlm", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    lm, lm_tok = load_lm(None, device=args.device)
    mlm, mlm_tok = load_mlm(args.mlm, device=args.device)
    timer = ForwardTimer(lm, mlm)
    print(f"device={args.device} threads={torch.get_num_threads()} keywords={KEYWORDS!r} chains={args.chains}")

    mlm_gen = KeywordGenerator(lm, lm_tok, mlm, mlm_tok)
    timer.wrap(mlm_gen.scorer, "log_prob_ids")
    run_textdiff(mlm_gen, 2, 2, args.seed)  # warm-up
    timer.total = 0.0
    acc_mlm, wall_mlm = run_textdiff(mlm_gen, args.chains, args.steps, args.seed)
    forward_mlm = timer.total
    lm_gen = KeywordGenerator(lm, lm_tok, proposal="lm", lm_top_k=args.top_k)
    acc_lm, wall_lm = run_textdiff(lm_gen, args.chains, args.lm_steps, args.seed)
    prefix = lm_gen.scorer.prefix_ids
    acc_cgmh, wall_cgmh = run_cgmh(lm, lm_tok, prefix, args.cgmh_steps, args.top_k, 0.8, args.seed)

    rate_cgmh = max(acc_cgmh, 1) / wall_cgmh
    rows = [
        (f"textdiff MH, {args.chains} chains, MLM proposal", args.steps, acc_mlm, wall_mlm),
        (f"textdiff MH, {args.chains} chains, LM proposal top-{args.top_k}", args.lm_steps, acc_lm, wall_lm),
        (f"CGMH-style loop, 1 chain, top-{args.top_k}, 1 forward/candidate", args.cgmh_steps, acc_cgmh, wall_cgmh),
    ]
    print(f"{'sampler':58s} {'steps':>5s} {'accepted':>8s} {'wall s':>8s} {'acc/s':>8s} {'vs CGMH':>8s}")
    for name, steps, acc, wall in rows:
        print(f"{name:58s} {steps:5d} {acc:8d} {wall:8.1f} {acc / wall:8.3f} {acc / wall / rate_cgmh:7.1f}x")
    if acc_cgmh == 0:
        print("(the CGMH loop accepted nothing; its rate is taken as 1 accepted edit over its wall time)")
    overhead = (wall_mlm - forward_mlm) / wall_mlm
    print(f"sampler overhead (MLM run): wall {wall_mlm:.2f} s, model forwards {forward_mlm:.2f} s, "
          f"overhead {100 * overhead:.1f} %")


if __name__ == "__main__":
    main()
