"""``textdiff train``: train a masking-diffusion x0 predictor (or the AR baseline) on local text files."""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
from pathlib import Path

from textdiff import checks
from textdiff.cli.common import add_device_option, add_seed_option, add_threads_option, default_device

#: the verb's line in ``textdiff --help`` (read without importing this module)
HELP = "train a masked-diffusion denoiser or an autoregressive baseline on local text files"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help=HELP,
        description="Train an x0 predictor for the masking diffusion process (cross-entropy on masked positions, mask "
        "rate t ~ U[t_min, 1] per example; ELBO perplexity on held-out data) or, with --objective ar, a causal "
        "transformer of the same size on the same packed blocks. Resumes automatically from OUT/latest.json. "
        "Runs unchanged under torchrun (DDP).",
    )
    p.add_argument("--train-files", nargs="+", required=True, help="text files or globs (one document per line)")
    p.add_argument("--valid-files", nargs="*", default=[], help="held-out text files or globs for ELBO evaluation")
    p.add_argument("--out", required=True, help="run directory (checkpoints, latest.json, log.jsonl)")
    p.add_argument("--tokenizer", help="HF tokenizer directory or a textdiff UnigramTokenizer directory "
                   "(default: the --init model's tokenizer)")
    p.add_argument("--init", help="start from this local HF masked-LM directory (safetensors; e.g. a BERT encoder, "
                   "whose missing MLM head is freshly initialised and tied to the word embeddings)")
    p.add_argument("--objective", choices=["mask", "ar"], default="mask", help="training objective (default: mask)")
    p.add_argument("--hidden-size", type=int, default=256, help="new denoiser: hidden size (default 256)")
    p.add_argument("--layers", type=int, default=4, help="new denoiser: number of layers (default 4)")
    p.add_argument("--heads", type=int, default=4, help="new denoiser: attention heads (default 4)")
    p.add_argument("--time-conditioning", action="store_true", help="new denoiser: add a time embedding of t")
    p.add_argument("--seq-len", type=int, default=128, help="packed block length incl. specials (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="blocks per step per process (default 16)")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (default 1000)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps (default 100)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--t-min", type=float, default=1e-3, help="smallest mask rate t (default 1e-3)")
    p.add_argument("--loss-weighting", choices=["udm", "elbo"], default="udm",
                   help="udm: plain cross-entropy over masked tokens (default); elbo: the per-token ELBO (weights "
                   "eta(t); optimises the reported ELBO perplexity directly)")
    p.add_argument("--no-antithetic", action="store_true", help="draw t independently per example")
    p.add_argument("--eval-every", type=int, default=200, help="evaluate every N steps (0: never; default 200)")
    p.add_argument("--eval-blocks", type=int, default=256, help="held-out blocks per evaluation (default 256)")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (default 200)")
    p.add_argument("--time-limit", type=float, help="stop (and checkpoint) after this many seconds")
    p.add_argument("--streaming", action="store_true", help="stream the training files instead of loading them")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in --out")
    p.add_argument("--export", help="write the final model (fp16 safetensors + tokenizer) to this directory")
    add_seed_option(p, default=0)
    add_device_option(p)
    add_threads_option(p)
    p.set_defaults(func=run)


def expand_files(patterns: list[str]) -> list[str]:
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        files.extend(matches)
    return files


def load_tokenizer(path: str, option: str = "--tokenizer"):
    """An HF tokenizer from a local directory, or a textdiff UnigramTokenizer saved with ``save_pretrained``;
    errors name ``option``, the argument that gave ``path``."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise FileNotFoundError(f"{option}: no such directory: {path}")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        try:
            from textdiff.tokenization import UnigramTokenizer

            return UnigramTokenizer.from_pretrained(path)
        except Exception:  # report the HF error, which names the files it looked for
            raise ValueError(f"{option} {path}: cannot load a tokenizer: {err}") from None


def build_model(args, tokenizer):
    """``(model, mask_id)``: the --init masked LM, or a new DenoiserModel sized by the arguments."""
    import torch

    from textdiff.models.denoiser import DenoiserConfig, DenoiserModel
    from textdiff.models.weights import check_safetensors_dir

    if args.init:
        from transformers import AutoModelForMaskedLM

        if args.objective != "mask":
            raise ValueError("--init starts a masked LM; use --objective mask (the AR baseline is a new model)")
        if not Path(args.init).is_dir():
            raise FileNotFoundError(f"--init: no such model directory: {args.init}")
        check_safetensors_dir(args.init)
        try:
            model = AutoModelForMaskedLM.from_pretrained(args.init, use_safetensors=True, dtype=torch.float32)
        except OSError as err:
            raise ValueError(f"--init {args.init}: cannot load a masked LM: {err}") from None
        return model, tokenizer.mask_token_id
    vocab = len(tokenizer)
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None:  # tokenizers without [MASK] get one extra id
        mask_id, vocab = vocab, vocab + 1
    config = DenoiserConfig(vocab_size=vocab, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                            num_attention_heads=args.heads, max_position_embeddings=args.seq_len,
                            time_conditioning=args.time_conditioning, causal=args.objective == "ar",
                            mask_token_id=mask_id, pad_token_id=getattr(tokenizer, "pad_token_id", None))
    return DenoiserModel(config), mask_id


def export_fp16(model, tokenizer, directory: str | Path) -> None:
    """Atomically replace ``directory`` with an fp16 safetensors copy of ``model`` (+ tokenizer files)."""
    import copy

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copy.deepcopy(model).half().save_pretrained(tmp, safe_serialization=True)
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(tmp)
    directory.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():  # keep foreign files (README.md model card) in place
        os.replace(f, directory / f.name)
    tmp.rmdir()


def check_output_dir(option: str, path: str | None) -> None:
    """``ValueError`` naming ``option`` when ``path`` names something that exists and is not a directory."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"{option} {path} exists and is not a directory")


def check_arguments(args: argparse.Namespace) -> None:
    """Every numeric and path argument that is not a hyper-parameter of :class:`TrainConfig` (checked there)."""
    for option in ("hidden_size", "layers", "heads"):
        checks.positive_int(f"--{option.replace('_', '-')}", getattr(args, option))
    checks.positive_int("--seq-len", args.seq_len, minimum=3)
    if args.time_limit is not None:
        checks.positive_float("--time-limit", args.time_limit)
    if not (args.tokenizer or args.init):
        raise ValueError("--tokenizer is required unless --init names a model directory that holds its tokenizer")
    check_output_dir("--out", args.out)
    check_output_dir("--export", args.export)


def run(args: argparse.Namespace) -> int:
    """The ``train`` verb: exit 0 when training finished, 1 when it diverged (the last good checkpoint is kept)."""
    import torch

    from textdiff.training.data import PackingSpec, load_packed_dataset
    from textdiff.training.records import JsonLog, TrainingDiverged
    from textdiff.training.trainer import TrainConfig, Trainer

    check_arguments(args)
    config = TrainConfig(objective=args.objective, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         max_steps=args.max_steps, lr=args.lr, weight_decay=args.weight_decay,
                         warmup_steps=args.warmup_steps, t_min=args.t_min, antithetic=not args.no_antithetic,
                         loss_weighting=args.loss_weighting, eval_every=args.eval_every, eval_blocks=args.eval_blocks,
                         save_every=args.save_every, seed=args.seed)
    device = args.device or default_device()
    tokenizer = load_tokenizer(args.tokenizer, "--tokenizer") if args.tokenizer else load_tokenizer(args.init, "--init")
    torch.manual_seed(args.seed)
    model, mask_id = build_model(args, tokenizer)
    spec = PackingSpec.for_tokenizer(tokenizer, args.seq_len)
    train = load_packed_dataset(expand_files(args.train_files), tokenizer, spec, streaming=args.streaming)
    valid = load_packed_dataset(expand_files(args.valid_files), tokenizer, spec) if args.valid_files else None
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {args.out}: cannot create the directory ({err.strerror})") from None
    log = JsonLog(out / "log.jsonl")

    def notice(message: str) -> None:
        print(f"textdiff train: {message}", file=sys.stderr, flush=True)

    trainer = Trainer(model, config, train, spec, mask_id, out, valid, device, tokenizer, notice, log)
    if not args.no_resume and trainer.load_checkpoint() and trainer.is_main:
        log({"resumed_from_step": trainer.step, "checkpoint": trainer.last_checkpoint.name})
    try:
        trainer.train(time_limit=args.time_limit)
        if trainer.is_main:
            if not config.save_every or trainer.step % config.save_every:
                trainer.save_checkpoint()
            evaluation = trainer.evaluate()
            log({"final_step": trainer.step, "tokens_seen": trainer.tokens_seen}
                | (evaluation.as_dict() if evaluation else {}))
            if args.export:
                export_fp16(trainer.core, tokenizer, args.export)
    except TrainingDiverged as err:
        print(f"textdiff train: error: {err}", file=sys.stderr)
        return 1
    if trainer.world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0
