"""Fine-tune the shipped masked-diffusion MLM (``textdiff/assets/models/minilm-mlm``) into a label-conditional
denoiser for classifier-free guidance (docs/guidance.md#classifier-free-guidance), evaluate it on the held-out test
split and ship it with its model card to ``textdiff/assets/models/minilm-mlm-cond``.

Rows are ``[CLS] <cond> sentence [SEP]`` (``textdiff.training.conditional``): ``<cond>`` is ``[unused1]`` positive,
``[unused2]`` negative, ``[unused3]`` subjective, ``[unused4]`` objective, replaced by the null token ``[unused0]``
with probability ``--p-uncond``. Data: the train splits of both tasks of ``textdiff.training.labeled``; the valid
split is evaluated during training, the test split only for the model card. Objective: masking diffusion as in
``textdiff train --objective mask`` (docs/training.md#loss). Runs resume from ``--out``; a stretch ends at
``--max-steps`` or after ``--minutes``, then the fp16 model is written to ``<export>.tmp``, evaluated, carded and
renamed to ``<export>``. On 2 shared CPU cores:

    OMP_NUM_THREADS=1 nohup nice -n 5 python recipes/train_conditional.py --minutes 25 --max-steps 320 &
    python recipes/train_conditional.py --card-only     # re-evaluate the shipped model and rewrite its card
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from textdiff import checks
from textdiff.rng import make_generator
from textdiff.training.conditional import (
    CONDITION_MODES,
    CONDITION_POSITION,
    CONDITION_TOKENS,
    ConditionalTrainer,
    as_dataset,
    labeled_rows,
    save_condition_table,
)
from textdiff.training.labeled import TASKS
from textdiff.training.records import JsonLog
from textdiff.training.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "textdiff" / "assets" / "models"
INIT, EXPORT, RUN = MODELS / "minilm-mlm", MODELS / "minilm-mlm-cond", REPO / "runs" / "minilm-mlm-cond"
EVAL_BATCH = 64
COLUMNS = ("conditional/true", "conditional/null", "conditional/wrong", "reference/none")


@torch.no_grad()
def sentence_bounds(trainer: ConditionalTrainer, rows, repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sentence negative ELBO (nats; mean of ``repeats`` antithetic time draws from a generator seeded 1234) and
    scored body tokens per sentence; rows of equal shape get the same time and mask draws (paired comparisons)."""
    trainer.model.eval()
    generator = make_generator(1234)
    bounds, counts = [], []
    for start in range(0, len(rows), EVAL_BATCH):
        ids = rows[start : start + EVAL_BATCH]["input_ids"]
        draws = [trainer.loss(ids, generator, antithetic=True) for _ in range(repeats)]
        bounds.append(torch.stack([bound for _, bound, _ in draws]).mean(0))
        counts.append(draws[0][2])
    return torch.cat(bounds), torch.cat(counts).double()


def summary(bounds: dict[str, torch.Tensor], counts: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per-token bound of every mode and the paired differences ``true − null`` and ``wrong − null`` with their
    standard errors (over sentences)."""
    out = {k: {"nll": float(b.sum() / counts.sum()), "ppl": math.exp(b.sum() / counts.sum()),
               "tokens": int(counts.sum())} for k, b in bounds.items()}
    for mode in ("true", "wrong"):
        d = bounds[f"conditional/{mode}"] - bounds["conditional/null"]
        out[f"{mode}-null"] = {"diff": float(d.sum() / counts.sum()),
                               "se": float(d.std() * math.sqrt(len(d)) / counts.sum())}
    return out


def evaluate_test(model_dir: Path, reference_dir: Path, repeats: int) -> dict[str, dict[str, dict[str, float]]]:
    """Negative ELBO per token (nats) on the test split, per task and overall: the conditional model with the true,
    null and wrong condition, and the unconditional reference on ``[CLS] sentence [SEP]``; see
    :func:`sentence_bounds`."""
    from textdiff.models import load_mlm

    bounds: dict[str, dict[str, torch.Tensor]] = {task: {} for task in TASKS}
    counts: dict[str, torch.Tensor] = {}
    for name, directory, modes in (("conditional", model_dir, CONDITION_MODES),
                                   ("reference", reference_dir, ("none",))):
        model, tokenizer = load_mlm(directory)
        for mode in modes:
            for task in TASKS:
                rows = as_dataset(labeled_rows(tokenizer, "test", mode, tasks=(task,)))
                trainer = ConditionalTrainer(model, TrainConfig(batch_size=EVAL_BATCH), tokenizer, rows,
                                             RUN / "eval", conditional=mode != "none", log=print)
                bounds[task][f"{name}/{mode}"], counts[task] = sentence_bounds(trainer, rows, repeats)
                nll = float(bounds[task][f"{name}/{mode}"].sum() / counts[task].sum())
                print(f"test {task} {name}/{mode}: {nll:.4f} nats/token", flush=True)
    every = {key: torch.cat([bounds[task][key] for task in TASKS]) for key in bounds[next(iter(TASKS))]}
    results = {task: summary(bounds[task], counts[task]) for task in TASKS}
    results["all"] = summary(every, torch.cat([counts[task] for task in TASKS]))
    return results


def write_card(directory: Path, metrics: dict) -> None:
    """``README.md`` (model card) and ``training_metrics.json`` of the model in ``directory``."""
    history, test = metrics["history"], metrics["test"]
    steps, seconds = sum(h["steps"] for h in history), sum(h["seconds"] for h in history)
    size = (directory / "model.safetensors").stat().st_size / 2**20
    last = history[-1]
    rows = "\n".join(
        f"| {task} | " + " | ".join(f"{r[k]['nll']:.4f}" for k in COLUMNS) + " | "
        + " | ".join(f"{r[k]['diff']:+.4f} ± {r[k]['se']:.4f}" for k in ("true-null", "wrong-null"))
        + f" | {r[COLUMNS[0]]['tokens']:,} |" for task, r in test.items())
    valid = ", ".join(f"{v['step']}: {v['eval_nll']:.3f}" for v in metrics["valid_curve"])
    tokens = ", ".join(f"`{name}` → `{token}`" for name, token in CONDITION_TOKENS.items())
    card = f"""# minilm-mlm-cond — label-conditional masked-diffusion BERT for classifier-free guidance

`minilm-mlm` (the default masked-diffusion MLM of textdiff; 6 layers, hidden 384, bert-base-uncased WordPiece)
fine-tuned into a **label-conditional** x0 predictor `q_θ(x0 | x_t, y)` with null-condition training, so that one
network gives both the conditional and the unconditional logits that classifier-free guidance mixes
(docs/guidance.md, "Classifier-free guidance"). Stored in fp16 safetensors ({size:.1f} MB), HF `BertForMaskedLM`.

## Format

* Input: `[CLS] <cond> sentence [SEP]`, the condition token at position {CONDITION_POSITION}, at most 64 body word
  pieces, right-padded with `[PAD]` (attention mask 0). `[CLS]`, `<cond>` and `[SEP]` are never masked; pass them as
  protected tokens when sampling.
* Condition tokens: {tokens}; stored in `config.json` as `condition_tokens` and
  `condition_position`.
* CFG per masked position: `(1 + w) · log_softmax(logits | <label>) − w · log_softmax(logits | [unused0])`. CFG
  outputs are not exact for w ≠ 0 (not samples of the conditional model); `w = 0` is the plain conditional model.

Load offline: `textdiff.models.load_mlm("textdiff/assets/models/minilm-mlm-cond")` or
`AutoModelForMaskedLM.from_pretrained(...)`; `config.condition_tokens` maps label names to tokens.

## Training

* Data: the `train` split of the sentence-polarity (positive/negative) and subjectivity (subjective/objective)
  sentences of Pang & Lee (CC BY 4.0), `data/labeled/*.tsv` via `textdiff.training.labeled`; the split is the
  CRC-32 of the sentence text mod 10 (0 → test, 1 → valid, else train), so a sentence never crosses splits.
  {metrics['train_sentences']:,} training sentences.
* Condition dropped to the null token with probability p_uncond = {metrics['p_uncond']}.
* Objective: masking diffusion (`textdiff.training.Trainer`, objective `mask`, default unweighted UDM loss): per
  sentence t ~ U[0.001, 1] (antithetic over the batch), each body token masked with probability t, cross-entropy on
  the masked body positions.
* Optimiser: AdamW (β = 0.9, 0.98, weight decay 0.01), {last['warmup_steps']} warm-up steps + cosine to 0.1 × peak
  over {last['max_steps']:,} steps, peak lr {last['lr']}, batch {last['batch_size']} sentences, gradient clipping 1.0,
  seed {last['seed']}.
* Steps: {steps:,} in {seconds / 60:.1f} min of training ({len(history)} stretch(es)) on a shared 2-core CPU, one
  torch thread, niced ({metrics['platform']}).
* Valid negative ELBO per token (true condition, first 256 valid sentences, nats) by step: {valid}.
* Command: `OMP_NUM_THREADS=1 nice -n 5 python recipes/train_conditional.py {metrics['command']}`

## Evaluation (held-out test split, negative ELBO per token in nats, lower is better)

Masking-diffusion continuous-time bound (1/t-weighted masked cross-entropy), {metrics['repeats']} seeded antithetic
time draws per sentence (generator seed 1234). "true", "null", "wrong": this model with the true label, the null
token, the other label of the same task; these three share the sentences and the time/mask draws, so their
differences are paired (± one standard error over sentences). "reference": the unconditional `minilm-mlm` on
`[CLS] sentence [SEP]` (same sentences and seed, its own draws).

| test sentences | true | null | wrong | reference (minilm-mlm) | true − null | wrong − null | body tokens |
|---|---|---|---|---|---|---|---|
{rows}

## Limitations

* Domain: lower-cased English movie-review snippets and plot-summary sentences (Rotten Tomatoes / IMDb, Pang & Lee
  2004–2005); four labels only; bodies longer than 64 word pieces are truncated.
* A short CPU fine-tune: the conditioning effects are small (hundredths of a nat per token, see the paired
  differences); the reference column is worse mostly because of the domain shift, not the label.
* The reference `minilm-mlm` saw these sentences (test ones included) during its own training (its `--corpus full`
  stretch), and so did this model's initialisation; the numbers compare conditions, they are not clean
  held-out likelihoods of either model.
* The ELBO is an upper bound on the per-token NLL of the masked-diffusion model. CFG outputs are not exact for
  w ≠ 0.
"""
    (directory / "README.md").write_text(card, encoding="utf-8")
    (directory / "training_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")


def ship(trainer: ConditionalTrainer, tokenizer, metrics: dict, repeats: int, export: Path) -> None:
    """fp16 export with the condition table to ``<export>.tmp``, test evaluation and card there, then rename."""
    from textdiff.cli.train import export_fp16

    tmp = export.with_name(export.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_condition_table(trainer.core.config)
    export_fp16(trainer.core, tokenizer, tmp)
    metrics["test"] = evaluate_test(tmp, INIT, repeats)
    finish(tmp, metrics, export)


def finish(tmp: Path, metrics: dict, export: Path) -> None:
    """Write the card into ``tmp`` and move it to ``export`` (replacing an older one)."""
    write_card(tmp, metrics)
    if export.exists():
        shutil.rmtree(export)
    tmp.replace(export)
    print(f"wrote {export}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=25.0, help="training time of this stretch (default 25)")
    parser.add_argument("--max-steps", type=int, default=320, help="cosine schedule length (default 320)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per step (default 32)")
    parser.add_argument("--warmup-steps", type=int, default=30, help="linear warm-up steps (default 30)")
    parser.add_argument("--p-uncond", type=float, default=0.1, help="null-condition rate (default 0.1)")
    parser.add_argument("--eval-every", type=int, default=100, help="valid evaluation every N steps (default 100)")
    parser.add_argument("--repeats", type=int, default=2, help="time draws per test sentence (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="data order, time/mask draws, dropout (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=RUN, help=f"run directory with checkpoints (default {RUN})")
    parser.add_argument("--export", type=Path, default=EXPORT, help=f"model directory to write (default {EXPORT})")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint")
    parser.add_argument("--card-only", action="store_true", help="re-evaluate --export and rewrite its card")
    args = parser.parse_args(argv)
    try:
        checks.positive_float("--minutes", args.minutes)
        checks.positive_int("--threads", args.threads)
        checks.positive_int("--repeats", args.repeats)
        checks.finite_float("--p-uncond", args.p_uncond, low=0.0, high=1.0)
        for option in ("out", "export"):
            path = getattr(args, option)
            if path.exists() and not path.is_dir():
                raise ValueError(f"--{option} {path} exists and is not a directory")
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # dropout
    from textdiff.models import load_mlm

    if args.card_only:
        metrics = json.loads((args.export / "training_metrics.json").read_text())
        metrics["repeats"] = args.repeats
        metrics["test"] = evaluate_test(args.export, INIT, args.repeats)
        tmp = args.export.with_name(args.export.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(args.export, tmp)
        finish(tmp, metrics, args.export)
        return 0
    config = TrainConfig(batch_size=args.batch_size, max_steps=args.max_steps, lr=args.lr,
                         warmup_steps=args.warmup_steps, eval_every=args.eval_every, eval_blocks=256,
                         save_every=100, keep_checkpoints=1, seed=args.seed)
    model, tokenizer = load_mlm(INIT)  # float32, frozen for inference: unfreeze
    model.requires_grad_(True)
    train, valid = (as_dataset(labeled_rows(tokenizer, split)) for split in ("train", "valid"))
    args.out.mkdir(parents=True, exist_ok=True)
    log = JsonLog(args.out / "log.jsonl", echo=False)
    trainer = ConditionalTrainer(model, config, tokenizer, train, args.out, valid, p_uncond=args.p_uncond, record=log)
    if not args.no_resume and trainer.load_checkpoint():
        print(f"resumed from {trainer.last_checkpoint}", flush=True)
    history_file = args.out / "history.json"
    history = json.loads(history_file.read_text()) if history_file.exists() and not args.no_resume else []
    start, first = time.time(), trainer.step
    trainer.train(time_limit=60 * args.minutes)
    seconds = time.time() - start
    trainer.save_checkpoint()
    history.append({"steps": trainer.step - first, "seconds": round(seconds, 1), "end_step": trainer.step,
                    "lr": config.lr, "batch_size": config.batch_size, "max_steps": config.max_steps,
                    "warmup_steps": config.warmup_steps, "seed": config.seed})
    history_file.write_text(json.dumps(history, indent=1) + "\n")
    print(f"trained {trainer.step - first} steps in {seconds / 60:.1f} min (step {trainer.step})", flush=True)
    curve = [json.loads(line) for line in (args.out / "log.jsonl").read_text().splitlines()]
    metrics = {"history": history, "train_sentences": len(train), "p_uncond": args.p_uncond, "repeats": args.repeats,
               "platform": f"{platform.machine()}, torch {torch.__version__}",
               "command": " ".join(sys.argv[1:]) or "(defaults)",
               "valid_curve": [{"step": r["step"], "eval_nll": r["eval_nll"]} for r in curve if "eval_nll" in r]}
    ship(trainer, tokenizer, metrics, args.repeats, args.export)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (FileNotFoundError, ValueError) as err:
        print(f"train_conditional: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
