"""Benchmarks of the masking diffusion stack, side by side in one run (timings belong here, never in tests).

1. Likelihood: ELBO perplexity of a masking denoiser vs the AR baseline of the same size, on the same packed blocks
   and the same token budget (``textdiff.training.Trainer``, objectives ``mask`` and ``ar``); prints the ratio
   (goal ≤ 1.15x at convergence; small CPU budgets are far from it — the budget is printed). Measured on 2 CPU
   cores (0.91M-parameter RoPE transformer): 4,096,000 tokens each (``--steps 4000``) → 277.6 vs 92.6 = 3.00x. On one
   H100 (13.7M parameters, 49M tokens each, the last command below, ≈ 7 min): 108.0 vs 71.2 = 1.52x, AR best 62.0 at
   step 2000.
2. Sampling time with and without the predictor cache (first-hitting skip + per-row reuse) at T = 1024, L = 128.
3. Generative perplexity of samples under SmolLM2-135M (``textdiff.models.load_lm``) WITH the mean per-sample
   unigram entropy beside it (docs/numerics.md#reporting-sample-quality), for the default BERT
   (``data/models/minilm-mlm``) and held-out text.

    python recipes/bench_diffusion.py --threads 1            # ≈10-15 min on 2 shared CPU cores
    python recipes/train_denoiser.py --prepare-only --corpus full   # once: writes data/corpus/denoiser_en_full
    python recipes/bench_diffusion.py --skip cache genppl --train-files 'data/corpus/denoiser_en_full/*.train.txt' \
        --steps 3000 --batch-size 128 --seq-len 128 --hidden 384 --layers 6 --vocab 8000 --eval-every 500
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "corpus" / "denoiser_en"


def small_tokenizer(vocab_size: int, directory: Path, train_files: list[Path]):
    """A WordPiece tokenizer trained on the training files (small vocabulary keeps CPU budgets meaningful)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train([str(f) for f in train_files], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(directory)
    return fast


def likelihood_bench(args, work: Path):
    """Train mask and AR models of equal size on equal budgets; return the mask model and its tokenizer."""
    from textdiff.models import DenoiserConfig, DenoiserModel
    from textdiff.training.data import PackingSpec, load_packed_dataset
    from textdiff.training.trainer import TrainConfig, Trainer

    train_files = [Path(f) for f in sorted(glob.glob(args.train_files))]
    if not train_files:
        raise SystemExit(f"--train-files {args.train_files!r} matches no file")
    tokenizer = small_tokenizer(args.vocab, work / "tokenizer", train_files)
    spec = PackingSpec.for_tokenizer(tokenizer, args.seq_len)
    train = load_packed_dataset(train_files, tokenizer, spec)
    valid = load_packed_dataset(sorted(CORPUS.glob("*.valid.txt")), tokenizer, spec)
    results, models = {}, {}
    for objective in ("mask", "ar"):
        torch.manual_seed(0)
        config = DenoiserConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
                                num_attention_heads=args.hidden // 32, max_position_embeddings=max(args.seq_len, 128),
                                causal=objective == "ar", mask_token_id=tokenizer.mask_token_id)
        model = DenoiserModel(config)
        trainer = Trainer(model, TrainConfig(objective=objective, batch_size=args.batch_size, max_steps=args.steps,
                                             loss_weighting=args.loss_weighting, lr=args.lr,
                                             warmup_steps=args.steps // 20, eval_every=args.eval_every,
                                             save_every=0, eval_blocks=len(valid)),
                          train, spec, tokenizer.mask_token_id, work / objective, valid, device=args.device,
                          log=lambda s: None)
        start = time.time()
        log = trainer.train(progress=True)
        results[objective] = trainer.evaluate(valid, max_blocks=len(valid), repeats=8).as_dict()
        results[objective]["train_s"] = time.time() - start
        evals = [(r.evaluation.ppl, r.step) for r in log if r.evaluation]
        results[objective]["best"] = min(evals) if evals else None
        models[objective] = model.eval()
    n_params = sum(p.numel() for p in models["mask"].parameters())
    tokens = args.steps * args.batch_size * args.seq_len
    epochs = tokens / (len(train) * args.seq_len)
    print(f"\n## 1. ELBO perplexity vs AR baseline (same {n_params / 1e6:.2f}M-parameter transformer, WordPiece "
          f"{len(tokenizer)}, {args.steps} steps x {args.batch_size} x {args.seq_len} = {tokens:,} tokens each, "
          f"{epochs:.1f} epochs of {len(train) * args.seq_len:,} training tokens; device {args.device})")
    print("| model | held-out perplexity | train time |\n|---|---|---|")
    print(f"| masking diffusion ({args.loss_weighting}-weighted loss; ELBO bound, 8 t-draws/block) | "
          f"{results['mask']['eval_ppl']:.1f} | "
          f"{results['mask']['train_s']:.0f} s |")
    print(f"| autoregressive baseline (exact) | {results['ar']['eval_ppl']:.1f} | {results['ar']['train_s']:.0f} s |")
    print(f"ratio ELBO-PPL / AR-PPL = {results['mask']['eval_ppl'] / results['ar']['eval_ppl']:.2f}x "
          f"(held-out tokens: {results['ar']['eval_tokens']:,})")
    if results["mask"]["best"] and results["ar"]["best"]:
        (mask_ppl, mask_step), (ar_ppl, ar_step) = results["mask"]["best"], results["ar"]["best"]
        print(f"best of the evaluations every {args.eval_every} steps (early stopping; 4 t-draws/block): masking "
              f"{mask_ppl:.1f} at step {mask_step}, AR {ar_ppl:.1f} at step {ar_step}, ratio {mask_ppl / ar_ppl:.2f}x")
    return models["mask"], tokenizer


def cache_bench(model, tokenizer, args):
    from textdiff.models import DenoiserPredictor
    from textdiff.udm import MaskingProcess, make_template, reverse_sample

    process = MaskingProcess(tokenizer.mask_token_id, "linear")
    predictor = DenoiserPredictor(model.float().cpu())
    template = make_template(args.cache_batch, 128)
    print(f"\n## 2. Predictor cache: T = 1024 steps, L = 128, batch {args.cache_batch} (linear schedule)")
    print("| sampler | network calls | rows through the network | time |\n|---|---|---|---|")
    times, outs = {}, {}
    for cache in (False, True):
        start = time.time()
        out = reverse_sample(process, predictor, template, 1024, seed=0, cache=cache)
        times[cache], outs[cache], stats = time.time() - start, out.ids, out.stats
        name = "cache (skip + per-row reuse)" if cache else "no cache (network every step)"
        print(f"| {name} | {stats.network_calls} | {stats.network_rows} | {times[cache]:.1f} s |")
    print(f"speed-up {times[False] / times[True]:.2f}x; identical samples: {torch.equal(outs[False], outs[True])}")


def gen_ppl_bench(args):
    from textdiff.mcmc.targets import CausalLMScorer
    from textdiff.metrics import perplexity, unigram_entropy
    from textdiff.models import MaskedLMPredictor, load_lm, load_mlm
    from textdiff.udm import MaskingProcess, X0Draw, make_template, reverse_sample
    from textdiff.udm.sampler import forbid_tokens

    mlm, mlm_tok = load_mlm()
    lm, lm_tok = load_lm()
    scorer = CausalLMScorer(lm, lm_tok)
    predictor = MaskedLMPredictor(mlm, mlm_tok.mask_token_id)
    L, n = args.gen_length, args.gen_samples
    template = make_template(n, L + 2, [mlm_tok.cls_token_id])
    template.ids[:, -1] = mlm_tok.sep_token_id
    template.protected[:, -1] = True
    rows = []
    for label, schedule, steps, draw in (("mask, count form, 1 token/step", "count", L, X0Draw()),
                                         ("mask, linear, L/4 steps", "linear", L // 4, X0Draw()),
                                         ("mask, count form, top-k 50 (not exact)", "count", L, X0Draw(top_k=50))):
        start = time.time()
        out = reverse_sample(MaskingProcess(mlm_tok.mask_token_id, schedule), predictor, template, steps, seed=0,
                             draw=draw, logits_hooks=[forbid_tokens(mlm_tok.all_special_ids)])
        texts = mlm_tok.batch_decode(out.ids, skip_special_tokens=True)
        rows.append((label, texts, time.time() - start, [unigram_entropy(r[1:-1].tolist()) for r in out.ids]))
    valid_lines = [s for s in (CORPUS / "state_union.valid.txt").read_text().splitlines() if len(s.split()) > 20][:n]
    reference = [mlm_tok.decode(mlm_tok(s, add_special_tokens=False)["input_ids"][:L]) for s in valid_lines]
    rows.append(("held-out text (reference)", reference, 0.0,
                 [unigram_entropy(mlm_tok(s, add_special_tokens=False)["input_ids"][:L]) for s in valid_lines]))
    print(f"\n## 3. Generative perplexity under SmolLM2-135M-Instruct (GGUF Q4_1 → fp32; BOS-conditioned, text + EOS, "
          f"retokenised), {n} samples of {L} WordPiece tokens from data/models/minilm-mlm; float64 draws")
    print("| sampler | gen-PPL | unigram entropy (nats) | sampling time |\n|---|---|---|---|")
    for label, texts, seconds, entropies in rows:
        print(f"| {label} | {perplexity(scorer, texts):.1f} | {sum(entropies) / len(entropies):.2f} | "
              f"{seconds:.1f} s |")
    print("\nexample:", rows[0][1][0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps per objective (default 600)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of both models (default 1e-3)")
    parser.add_argument("--loss-weighting", choices=["udm", "elbo"], default="udm",
                        help="masking model's training loss: the UDM loss (default; measured better at 4M tokens, "
                        "ELBO PPL 277.6 vs 321.9) or the ELBO itself")
    parser.add_argument("--train-files", default=str(CORPUS / "*.train.txt"),
                        help="training text files (glob); held-out files stay data/corpus/denoiser_en/*.valid.txt")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps and print the best "
                                                                    "(early-stopped) perplexity of each model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache-batch", type=int, default=4)
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--gen-samples", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["likelihood", "cache", "genppl"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bench_diffusion on {'CUDA' if torch.cuda.is_available() else 'CPU'} "
          f"({torch.get_num_threads()} threads); torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        model = tokenizer = None
        if "likelihood" not in args.skip or "cache" not in args.skip:
            model, tokenizer = likelihood_bench(args, Path(tmp))
        if "cache" not in args.skip:
            cache_bench(model, tokenizer, args)
    if "genppl" not in args.skip:
        gen_ppl_bench(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
