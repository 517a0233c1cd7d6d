"""Throughput of textdiff's unigram tokenizer vs SentencePiece and 🤗 tokenizers, side by side in one run (same model,
lines, threads).

Measures Viterbi encoding, exact sampling (SentencePiece ``enable_sampling=True, nbest_size=-1``; 🤗 tokenizers
``Unigram(alpha=, nbest_size=None)``, the full lattice, built from the same pieces, scores and charsmap) and
normalisation alone (line by line) in MB/s of UTF-8 input and tokens/s (characters/s for ``normalize``), and prints
textdiff / SentencePiece and textdiff / 🤗 ratios. CUDA is measured when present. ``--corpus`` takes any folder of
``.txt`` files (e.g. non-English text with a model trained on it).

How it is measured: every system gets the same list of corpus lines in one call each (``tok.encode(lines)``,
``sp.encode(lines, num_threads=T)``, ``hf.encode_batch(lines)`` with ``RAYON_NUM_THREADS=T``), in the same process
with the same thread count. The ``b256`` rows encode 256-line batches, as a training collator does, returning lists
or (``pt``) ``return_tensors="pt"`` padded tensors on the device, the device sync included. The ``bytes`` rows
run the device pipeline (``encode_bytes``) from the Arrow string array of the same lines (``pyarrow.array(lines)``,
as a ``datasets`` column holds them) to padded ids on the device, whole or in 256-line slices, the buffer
conversion and the host-to-device copy included. ``cold`` clears the
word-lattice cache of a second textdiff tokenizer before every call (the first pass over new text); the other rows
run with the cache that the warm-up call filled (a training run after its first batches). The ``loader`` rows run
a ``DataLoader`` with ``--workers`` workers over the lines in 256-line batches, each system inside the collate
function (padded tensors out). After one warm-up call per system, every round times each system once, in turn,
and each system keeps its best round (best of ``--repeats``). The absolute MB/s depend on the machine and on its
load; the ratios are the machine-independent figures, since interleaving the rounds exposes all systems to the same
conditions.

Before timing, 🤗 tokenizers' sampling law is compared with textdiff's (exact, tested against enumeration) on short
lines: a two-sample chi-square test of 20,000 draws each; ``exact?`` reports the verdict. Peak RSS and the size of the
word-lattice cache are printed at the end.

    python recipes/bench_tokenize.py --lines 20000 --alpha 0.1
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import resource
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAW_LINES = ["unbelievable", "the cat sat", "Wherever", "regularization"]
LAW_DRAWS = 20_000


def hf_unigram(tok, alpha: float | None):
    """🤗 tokenizers' Unigram with textdiff's pieces, scores and SentencePiece normaliser (as ``from_spm`` builds it),
    sampling from the full lattice when ``alpha`` is given."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram

    vocab = list(zip(tok.vocab.pieces, map(float, tok.vocab.scores)))
    options = {} if alpha is None else {"alpha": alpha, "nbest_size": None}
    hf = Tokenizer(Unigram(vocab, tok.vocab.unk_id, tok.vocab.byte_fallback, **options))
    hf.normalizer = normalizers.Sequence([normalizers.Precompiled(tok.pipeline.sentencepiece.charsmap),
                                          normalizers.Replace(Regex(" {2,}"), " ")])
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    hf.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return hf


def same_law(ours: Counter, theirs: Counter) -> float:
    """p-value of a chi-square two-sample test (cells with fewer than 10 draws in all are pooled)."""
    from scipy import stats

    cells = set(ours) | set(theirs)
    big = [c for c in cells if ours[c] + theirs[c] >= 10]
    rest = [c for c in cells if ours[c] + theirs[c] < 10]
    table = [[ours[c] for c in big] + [sum(ours[c] for c in rest)],
             [theirs[c] for c in big] + [sum(theirs[c] for c in rest)]]
    table = [[a, b] for a, b in zip(*table) if a + b]
    return float(stats.chi2_contingency(list(zip(*table))).pvalue) if len(table) > 1 else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_model = REPO / "data/tokenizers/en-unigram-8k.model"
    if not default_model.is_file():
        default_model = REPO / "textdiff/assets/tokenizers/en-unigram-8k.model"
    parser.add_argument("--model", default=str(default_model),
                        help="SentencePiece unigram .model")
    default_corpus = REPO.parent / "shared/data/corpus/en"
    if not default_corpus.is_dir():
        default_corpus = REPO / "data/corpus/denoiser_en"
    parser.add_argument("--corpus", default=str(default_corpus),
                        help="folder of .txt files (default: ../shared/data/corpus/en, else the shipped subsample)")
    parser.add_argument("--lines", type=int, default=40000, help="number of corpus lines (shuffled, seed 0)")
    parser.add_argument("--alpha", type=float, default=0.1, help="sampling alpha (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch, SentencePiece and 🤗 threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timed runs per system (default: 3)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the loader rows (0: skip)")
    parser.add_argument("--rows", default="",
                        help="comma-separated parts of row names: run only the rows whose name holds one (e.g. "
                             "'sample b256,sample cpu' for the batched and one-call sampling rows; include the peers "
                             "of a ratio); the law check runs only with an 'hf' row (default: every row)")
    args = parser.parse_args()
    wanted = [part.strip() for part in args.rows.split(",") if part.strip()]
    selected = lambda name: not wanted or any(part in name for part in wanted)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))  # read when 🤗 tokenizers starts its pool
    import pyarrow as pa
    import sentencepiece as spm
    import tokenizers
    import torch

    from textdiff.padding import pad
    from textdiff.tokenization import UnigramTokenizer
    from textdiff.tokenization.bytes_input import arrow_text

    torch.set_num_threads(args.threads)
    lines = []
    for path in sorted(glob.glob(os.path.join(args.corpus, "*.txt"))):
        lines += [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        parser.error(f"--corpus {args.corpus} holds no .txt file with a non-empty line")
    random.Random(0).shuffle(lines)
    lines = lines[: args.lines]
    megabytes = sum(len(line.encode("utf-8")) for line in lines) / 1e6

    sp = spm.SentencePieceProcessor(model_file=args.model)
    tok = UnigramTokenizer.from_sentencepiece(args.model)
    hf_viterbi, hf_sample = hf_unigram(tok, None), hf_unigram(tok, args.alpha)
    print(f"{len(lines)} lines, {megabytes:.2f} MB, model {Path(args.model).name}, alpha {args.alpha}, "
          f"threads {args.threads}, torch {torch.__version__}, sentencepiece {spm.__version__}, "
          f"tokenizers {tokenizers.__version__}")

    law_lines = LAW_LINES if any(selected(name) for name in ("hf sample", "hf viterbi")) else []
    if law_lines:
        print(f"sampling law of 🤗 tokenizers vs textdiff (two-sample chi-square, {LAW_DRAWS} draws each, alpha "
              f"{args.alpha}):")
    for line in law_lines:
        ours = Counter(map(tuple, tok.encode([line] * LAW_DRAWS, alpha=args.alpha, seed=0)))
        theirs = Counter(tuple(e.ids) for e in hf_sample.encode_batch([line] * LAW_DRAWS))
        p_value = same_law(ours, theirs)
        print(f"  {line!r:18s} p = {p_value:.2e}  exact? {'yes' if p_value > 1e-3 else 'NO'}")

    batches = [lines[i : i + 256] for i in range(0, len(lines), 256)]  # a training collator's view of the data

    fresh = UnigramTokenizer.from_sentencepiece(args.model)  # its own cache: clearing it leaves tok's warm

    def cold(device: str) -> list:
        fresh.cache_clear()
        return fresh.encode(lines, alpha=args.alpha, seed=0, device=device)

    def batched(device: str, output: str) -> int:
        """Tokens of all batches; with tensors the count syncs the device inside the timing."""
        if output == "lists":
            return sum(len(row) for b in batches for row in tok.encode(b, alpha=args.alpha, seed=0, device=device))
        return sum(int(tok.encode(b, alpha=args.alpha, seed=0, device=device, return_tensors="pt")
                       ["attention_mask"].sum()) for b in batches)

    systems = {
        "sentencepiece viterbi": lambda: sp.encode(lines, num_threads=args.threads),
        "hf viterbi": lambda: [e.ids for e in hf_viterbi.encode_batch(lines)],
        "textdiff viterbi cpu": lambda: tok.encode(lines),
        "sentencepiece sample": lambda: sp.encode(
            lines, enable_sampling=True, alpha=args.alpha, nbest_size=-1, num_threads=args.threads
        ),
        "hf sample": lambda: [e.ids for e in hf_sample.encode_batch(lines)],
        "textdiff sample cpu": lambda: tok.encode(lines, alpha=args.alpha, seed=0),
        "textdiff sample cpu cold": lambda: cold("cpu"),
        "sentencepiece sample b256": lambda: [sp.encode(b, enable_sampling=True, alpha=args.alpha, nbest_size=-1,
                                                        num_threads=args.threads) for b in batches],
        "hf sample b256": lambda: [[e.ids for e in hf_sample.encode_batch(b)] for b in batches],
        "sentencepiece normalize": lambda: [sp.normalize(line) for line in lines],
        "textdiff normalize cpu": lambda: [tok.normalize(line) for line in lines],
    }
    column = pa.array(lines)  # a datasets column's Arrow strings: bytes -> padded ids, no Python string per line
    column_batches = [column.slice(i, 256) for i in range(0, len(lines), 256)]

    def from_bytes(device: str, alpha: float | None, parts: list) -> int:
        """Tokens of ``encode_bytes`` over Arrow arrays (Arrow buffers to tensors, to the device, padded ids out);
        the count syncs the device inside the timing."""
        total = 0
        for part in parts:
            data, offsets = arrow_text(part)
            out = tok.encode_bytes(data.to(device), offsets, alpha=alpha, seed=0, device=device)
            total += int(out["attention_mask"].sum())
        return total

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        systems[f"textdiff viterbi {device} bytes"] = lambda d=device: from_bytes(d, None, [column])
        systems[f"textdiff sample {device} bytes"] = lambda d=device: from_bytes(d, args.alpha, [column])
        systems[f"textdiff sample {device} b256 bytes"] = lambda d=device: from_bytes(d, args.alpha, column_batches)
        if device == "cuda":
            systems["textdiff viterbi cuda"] = lambda: tok.encode(lines, device="cuda")
            systems["textdiff sample cuda"] = lambda: tok.encode(lines, alpha=args.alpha, seed=0, device="cuda")
            systems["textdiff sample cuda cold"] = lambda: cold("cuda")
        for output in ("lists", "pt"):
            systems[f"textdiff sample {device} b256 {output}"] = lambda d=device, o=output: batched(d, o)
    if args.workers:
        collators = {
            "textdiff": tok.collator(alpha=args.alpha, seed=0),
            "sentencepiece": lambda b: pad(sp.encode(b, enable_sampling=True, alpha=args.alpha, nbest_size=-1), 0),
            "hf": lambda b: pad([e.ids for e in hf_sample.encode_batch(b)], 0),
        }
        for name, collate in collators.items():
            loader = torch.utils.data.DataLoader(lines, batch_size=256, num_workers=args.workers, collate_fn=collate,
                                                 persistent_workers=True)
            systems[f"{name} sample loader"] = lambda loader=loader: sum(1 for _ in loader)

    systems = {name: run for name, run in systems.items() if selected(name)}
    best, tokens = dict.fromkeys(systems, float("inf")), {}
    for run in systems.values():
        run()  # warm-up (trie build, word cache, CUDA context, worker start)
    for _ in range(args.repeats):  # rounds interleave the systems, so a change of machine load hits all of them
        for name, run in systems.items():
            start = time.perf_counter()
            out = run()
            best[name] = min(best[name], time.perf_counter() - start)
            if not name.endswith("loader"):
                tokens[name] = out if isinstance(out, int) else sum(map(len, out))  # characters for normalize
                if "b256" in name and not isinstance(out, int):
                    tokens[name] = sum(len(row) for batch in out for row in batch)
    results = {}
    for name in systems:
        results[name] = megabytes / best[name]
        rate = f"{tokens[name] / best[name] / 1e6:8.3f} M tok/s  ({tokens[name]} tokens)" if name in tokens else ""
        print(f"{name:30s} {results[name]:8.2f} MB/s {rate}")
    print("ratios (MB/s): textdiff / sentencepiece, textdiff / hf")
    for key in results:
        if key.startswith("textdiff"):
            suffix = " b256" if "b256" in key else " loader" if "loader" in key else ""
            peers = [f"{peer} {key.split()[1]}{suffix}" for peer in ("sentencepiece", "hf")]
            ratios = [f"{results[key] / results[peer]:6.2f}x" if peer in results else "    -  " for peer in peers]
            print(f"  {key[len('textdiff '):]:24s} " + "  ".join(ratios))
    info = tok.cache_info()
    print(f"word-lattice cache: {info['words']} words, {info['bytes'] / 2**20:.1f} MiB of "
          f"{info['cache_size'] / 2**20:.0f} MiB, hit rate {info['hits'] / max(1, info['hits'] + info['misses']):.3f}"
          f"; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
