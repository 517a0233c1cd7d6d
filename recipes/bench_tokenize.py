"""Throughput of textdiff's unigram tokenizer vs SentencePiece, side by side in one run (same model, lines, threads).

Measures Viterbi encoding, exact sampling (SentencePiece ``enable_sampling=True, nbest_size=-1``, the same law) and
normalisation alone (line by line, both sides) in MB/s of UTF-8 input and tokens/s (characters/s for
``normalize``), and prints textdiff / SentencePiece ratios. CUDA is measured when present. ``--corpus`` takes any
folder of ``.txt`` files (e.g. non-English text with a model trained on it).

How it is measured: both systems get the same list of corpus lines in one call each (``tok.encode(lines)``,
``sp.encode(lines, num_threads=T)``), in the same process with the same thread count, and return the same output
(a list of id lists). The ``b256`` rows encode 256-line batches, as a training collator does, returning lists or
(``pt``) ``return_tensors="pt"`` padded tensors on the device with no Python lists, the device sync included.
After one warm-up call per system, every round times each system once, in turn, and each
system keeps its best round (best of ``--repeats``). The absolute MB/s depend on the machine and on its load; the
ratios are the machine-independent figures, since interleaving the rounds exposes both systems to the same
conditions.

    python recipes/bench_tokenize.py --lines 40000 --alpha 0.1
"""

from __future__ import annotations

import argparse
import functools
import glob
import os
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "data/tokenizers/en-unigram-8k.model"),
                        help="SentencePiece unigram .model")
    parser.add_argument("--corpus", default=str(REPO.parent / "shared/data/corpus/en"), help="folder of .txt files")
    parser.add_argument("--lines", type=int, default=40000, help="number of corpus lines (shuffled, seed 0)")
    parser.add_argument("--alpha", type=float, default=0.1, help="sampling alpha (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch and SentencePiece threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timed runs per system (default: 3)")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import sentencepiece as spm
    import torch

    from textdiff.tokenization import UnigramTokenizer

    torch.set_num_threads(args.threads)
    lines = []
    for path in sorted(glob.glob(os.path.join(args.corpus, "*.txt"))):
        lines += [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(0).shuffle(lines)
    lines = lines[: args.lines]
    megabytes = sum(len(line.encode("utf-8")) for line in lines) / 1e6

    sp = spm.SentencePieceProcessor(model_file=args.model)
    tok = UnigramTokenizer.from_sentencepiece(args.model)
    systems = {
        "sentencepiece viterbi": lambda: sp.encode(lines, num_threads=args.threads),
        "textdiff viterbi cpu": lambda: tok.encode(lines),
        "sentencepiece sample": lambda: sp.encode(
            lines, enable_sampling=True, alpha=args.alpha, nbest_size=-1, num_threads=args.threads
        ),
        "textdiff sample cpu": lambda: tok.encode(lines, alpha=args.alpha, seed=0),
        "sentencepiece normalize": lambda: [sp.normalize(line) for line in lines],
        "textdiff normalize cpu": lambda: [tok.normalize(line) for line in lines],
    }
    batches = [lines[i : i + 256] for i in range(0, len(lines), 256)]  # a training collator's view of the data

    def batched(device: str, output: str) -> int:
        """Tokens of all batches; with tensors the count syncs the device inside the timing."""
        if output == "lists":
            return sum(len(row) for b in batches for row in tok.encode(b, alpha=args.alpha, seed=0, device=device))
        return sum(int(tok.encode(b, alpha=args.alpha, seed=0, device=device, return_tensors="pt")
                       ["attention_mask"].sum()) for b in batches)

    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        if device == "cuda":
            systems["textdiff viterbi cuda"] = lambda: tok.encode(lines, device="cuda")
            systems["textdiff sample cuda"] = lambda: tok.encode(lines, alpha=args.alpha, seed=0, device="cuda")
        for output in ("lists", "pt"):
            systems[f"textdiff sample {device} b256 {output}"] = functools.partial(batched, device, output)
    print(f"{len(lines)} lines, {megabytes:.2f} MB, model {Path(args.model).name}, alpha {args.alpha}, "
          f"threads {args.threads}, torch {torch.__version__}, sentencepiece {spm.__version__}")
    best, tokens = dict.fromkeys(systems, float("inf")), {}
    for run in systems.values():
        run()  # warm-up (trie build, CUDA context)
    for _ in range(args.repeats):  # rounds interleave the systems, so a change of machine load hits all of them
        for name, run in systems.items():
            start = time.perf_counter()
            out = run()
            best[name] = min(best[name], time.perf_counter() - start)
            tokens[name] = out if isinstance(out, int) else sum(map(len, out))  # characters for normalize
    results = {}
    for name in systems:
        results[name] = (megabytes / best[name], tokens[name] / best[name])
        print(f"{name:30s} {results[name][0]:8.2f} MB/s {results[name][1] / 1e6:8.3f} M tok/s  ({tokens[name]} tokens)")
    print("ratios (textdiff / sentencepiece, MB/s):")
    for mode in ("viterbi", "sample", "normalize"):
        for device in ("cpu", "cuda", "cpu b256 lists", "cpu b256 pt", "cuda b256 lists", "cuda b256 pt"):
            key = f"textdiff {mode} {device}"
            if key in results:
                ratio = results[key][0] / results[f"sentencepiece {mode}"][0]
                print(f"  {mode:8s} {device:15s} {ratio:6.2f}x")


if __name__ == "__main__":
    main()
