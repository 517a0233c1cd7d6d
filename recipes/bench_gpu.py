"""Benchmark: the GPU paths of issue 11 side by side with the paths they replace, in one run, with the bf16 roofline.

Every model is built with random weights from the real configs (MiniLM MLM: ``textdiff/assets/models/minilm-mlm``;
SmolLM2-135M-Instruct: ``recipes/assets/smollm2-135m-instruct``, config and tokenizer only), saved as safetensors in
a temporary directory and loaded through the package's loaders. Timings do not depend on the weights, and no weight
file has to travel to the GPU machine; sentence quality is measured on CPU with the real weights
(``recipes/eval_commongen.py``). Random weights make the LM drafts run to their token limit, so the keyword rows
time the worst case of the drafts.

Rows ("old" = float32 forwards and the output head on every position, the path before issue 11; "new" = the
defaults now: bfloat16 on CUDA, the head only where logits are used, and in the reverse loop logits only at the
positions a step draws, never ``[B, L, V]``). The MH and keyword rows compare precision only:
the tuple MH engine they replaced is gone (issue 11 measured it on the H200 at 2.4 / 4.7 / 7.0 s for 100 steps of
4 / 64 / 256 chains, 5.4 s per set with the defaults of then):

1. start-up: a fresh process importing textdiff and loading both models and their tokenizers, (old) float32 weights
   then ``.to(device)``, (new) ``load_lm``/``load_mlm`` in the forward dtype straight onto the device (with their
   checks: safetensors only, architecture, missing weights); import time alone beside it;
2. masked diffusion reverse loop (``reverse_sample``), ``--batch`` rows of ``--length`` tokens, ``--length`` steps;
3. Gibbs: ``--gibbs-chains`` chains of 32 tokens, ``--gibbs-steps`` steps;
4. MH (``KeywordGenerator.run_many``, no drafts): one CommonGen set, 100 steps, 4 / 64 / 256 chains;
5. keyword sentences with the default preset: one set at a time, and ``--sets`` sets in one population
   (``generate --input``), sets per second.

Rows 2 and 3 print the bf16 roofline: the FLOPs of the forwards per step (matmuls of the encoder on every token,
attention, the head where it runs) over the GPU's dense bf16 peak (790 TFLOP/s on the H200, 990 on the H100), and
the fraction of it reached. ``--compile`` adds two rows to each, the encoder under ``torch.compile`` and under
``torch.compile(mode="reduce-overhead")``, which captures the step's kernel launches in CUDA graphs (the reverse loop
and the Gibbs step call the encoder on one padded shape, so one graph serves every step). On CPU (no GPU lent)
``--quick`` runs every row at small sizes, as a check that the recipe works.

    python recipes/bench_gpu.py [--device cuda] [--quick] [--compile] [--sets 64] [--out bench_gpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import transformers

from textdiff.keywords import KeywordGenerator
from textdiff.mcmc.gibbs import gibbs_sample, masked_init
from textdiff.mcmc.positions import run_whole
from textdiff.models import MaskedLMPredictor, load_lm, load_mlm
from textdiff.support import TokenSupport
from textdiff.udm import make_process, reverse_sample
from textdiff.udm.sampler import make_template

ROOT = Path(__file__).resolve().parents[1]
MLM_CONFIG = ROOT / "textdiff" / "assets" / "models" / "minilm-mlm"
LM_CONFIG = ROOT / "recipes" / "assets" / "smollm2-135m-instruct"
COMMONGEN = ROOT / "data" / "commongen" / "commongen.dev.src_alpha.txt"
PEAK_BF16 = {"H200": 790e12, "H100": 990e12}  # dense bf16 TFLOP/s
#: ``torch.compile`` modes of the ``--compile`` rows: fused kernels, and the same with the step's launches captured
#: in CUDA graphs (``reduce-overhead``; on CPU it compiles as the default mode)
COMPILE_MODES = {"default": "torch.compile(encoder)",
                 "reduce-overhead": "torch.compile(encoder, mode='reduce-overhead'): CUDA graphs"}


def random_models(directory: Path) -> tuple[Path, Path]:
    """Random-weight copies of the MiniLM MLM and SmolLM2 (real configs and tokenizers), saved as bf16 safetensors."""
    torch.manual_seed(0)
    out = []
    for source, auto, name in ((MLM_CONFIG, transformers.AutoModelForMaskedLM, "mlm"),
                               (LM_CONFIG, transformers.AutoModelForCausalLM, "lm")):
        config = transformers.AutoConfig.from_pretrained(source)
        model = auto.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(directory / name, safe_serialization=True)
        transformers.AutoTokenizer.from_pretrained(source).save_pretrained(directory / name)
        out.append(directory / name)
    return out[0], out[1]


def compile_encoder(model, mode: str) -> None:
    """``model``'s encoder under ``torch.compile`` in ``mode``, from empty compile caches: the variants share the
    encoder's code, and the caches of earlier variants would otherwise reach dynamo's recompile limit and leave this
    one running eagerly."""
    torch.compiler.reset()
    model.bert = torch.compile(model.bert, dynamic=False, mode=mode)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function, device: str, repeats: int = 1) -> float:
    """Median wall seconds of ``function()`` after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def encoder_flops(model, rows: int, width: int, head_positions: float) -> float:
    """Forward FLOPs of a masked LM: ``2 · weights`` per token for the encoder's matmuls, ``4 · width · hidden`` per
    token and layer for attention, ``2 · head weights`` per position where the head runs."""
    config = model.config
    base = model.base_model
    body = sum(m.weight.numel() for m in base.modules() if isinstance(m, torch.nn.Linear))
    head = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) - body
    attention = 4 * width * config.hidden_size * config.num_hidden_layers
    return rows * width * (2 * body + attention) + 2 * head * head_positions


def startup(lm_dir: Path, mlm_dir: Path, device: str) -> dict[str, float]:
    """Seconds from a fresh interpreter to both models ready on ``device``: old and new loading, and imports."""
    old = f"""
import time; start = time.perf_counter()
import torch, transformers, textdiff.keywords
lm = transformers.AutoModelForCausalLM.from_pretrained({str(lm_dir)!r}, dtype=torch.float32).to({device!r})
mlm = transformers.AutoModelForMaskedLM.from_pretrained({str(mlm_dir)!r}, dtype=torch.float32).to({device!r})
tokenizers = [transformers.AutoTokenizer.from_pretrained(d) for d in ({str(lm_dir)!r}, {str(mlm_dir)!r})]
torch.zeros(1, device={device!r}).sum().item(); print(time.perf_counter() - start)"""
    new = f"""
import time; start = time.perf_counter()
from textdiff.models import load_lm, load_mlm
import torch
lm, _ = load_lm({str(lm_dir)!r}, device={device!r}); mlm, _ = load_mlm({str(mlm_dir)!r}, device={device!r})
torch.zeros(1, device={device!r}).sum().item(); print(time.perf_counter() - start)"""
    imports = """
import time; start = time.perf_counter()
import torch, transformers, textdiff.keywords, textdiff.models.hub; print(time.perf_counter() - start)"""
    seconds = {}
    for name, code in (("old: float32, then .to(device)", old), ("new: forward dtype, onto the device", new),
                       ("imports alone", imports)):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
        seconds[name] = float(result.stdout.strip().splitlines()[-1])
    return seconds


def diffusion(mlm_dir: Path, device: str, batch: int, length: int, compile_rows: bool) -> list[dict]:
    """The masked reverse loop (count form, one token per row and step): old (float32, the head on every position,
    ``[B, L, V]`` logits), the head at the masked positions with ``[B, L, V]`` logits still built (the path before
    ``logits_at``), new (forward dtype, logits at the one drawn position per row only)."""
    rows = []
    variants = [("old: float32, head on every position, [B, L, V] logits", "float32", "whole"),
                ("default dtype, head at masked positions, [B, L, V] logits", "auto", "masked"),
                ("new: default dtype, logits at drawn positions only", "auto", "drawn")]
    if compile_rows:
        variants += [(f"new + {label}", "auto", mode) for mode, label in COMPILE_MODES.items()]
    for name, dtype, head in variants:
        model, tokenizer = load_mlm(mlm_dir, device=device, dtype=dtype)
        if head == "whole":
            run_whole(model)
        if head in COMPILE_MODES:
            compile_encoder(model, head)
        predictor = MaskedLMPredictor(model, tokenizer.mask_token_id)
        if head in ("whole", "masked"):
            predictor = partial(MaskedLMPredictor.__call__, predictor)  # no logits_at: the dense [B, L, V] path
        process = make_process("mask", mask_id=tokenizer.mask_token_id, vocab_size=model.config.vocab_size,
                               schedule="count")
        template = make_template(batch, length + 2, [tokenizer.cls_token_id], device)
        template.ids[:, -1] = tokenizer.sep_token_id
        template.protected[:, -1] = True
        seconds = timed(partial(reverse_sample, process, predictor, template, length, seed=0), device)
        per_step = seconds / length
        head_positions = {"whole": batch * (length + 2), "masked": batch * length / 2}.get(head, batch)
        flops = encoder_flops(model, batch, length + 2, head_positions)
        rows.append({"row": "diffusion", "variant": name, "dtype": str(next(model.parameters()).dtype),
                     "seconds": seconds, "ms_per_step": 1000 * per_step, "tokens_per_s": batch * length / seconds,
                     "flops_per_step": flops})
    return rows


def gibbs(mlm_dir: Path, device: str, chains: int, steps: int, compile_rows: bool) -> list[dict]:
    """Gibbs chains of 32 tokens: old (float32, head everywhere) and new (forward dtype, head at one position)."""
    rows = []
    variants = [("old: float32, head on every position", "float32", "whole"),
                ("new: default dtype, head at the resampled position", "auto", "one")]
    if compile_rows:
        variants += [(f"new + {label}", "auto", mode) for mode, label in COMPILE_MODES.items()]
    for name, dtype, head in variants:
        model, tokenizer = load_mlm(mlm_dir, device=device, dtype=dtype)
        whole = head == "whole"
        if whole:
            run_whole(model)
        if head in COMPILE_MODES:
            compile_encoder(model, head)
        support = TokenSupport.from_tokenizer(tokenizer, model.config.vocab_size)
        init = masked_init(tokenizer, [32] * chains)
        seconds = timed(partial(gibbs_sample, model, init, support, steps=steps, burn_in=steps - 1, seed=0,
                                device=device), device)
        flops = encoder_flops(model, chains, 34, chains * (34 if whole else 1))
        rows.append({"row": "gibbs", "variant": name, "dtype": str(next(model.parameters()).dtype),
                     "seconds": seconds, "ms_per_step": 1000 * seconds / steps, "steps_per_s": steps / seconds,
                     "flops_per_step": flops})
    return rows


def keyword_rows(lm_dir: Path, mlm_dir: Path, device: str, sets: list[str], chain_counts: list[int],
                 mh_steps: int) -> list[dict]:
    """MH for one set at several chain counts, and the default preset one set at a time vs all sets at once."""
    rows = []
    for name, dtype in (("old: float32", "float32"), ("new: default dtype", "auto")):
        lm, lm_tok = load_lm(lm_dir, device=device, dtype=dtype)
        mlm, mlm_tok = load_mlm(mlm_dir, device=device, dtype=dtype)
        generator = KeywordGenerator(lm, lm_tok, mlm, mlm_tok)
        for chains in chain_counts:
            seconds = timed(partial(generator.run_many, [sets[0]], steps=mh_steps, chains=chains, drafts=0, seed=0),
                            device)
            rows.append({"row": "mh", "variant": name, "chains": chains, "steps": mh_steps, "seconds": seconds,
                         "chain_steps_per_s": chains * mh_steps / seconds})
        one = [timed(partial(generator.generate, s, seed=0, inflect=True), device) for s in sets[:4]]
        rows.append({"row": "keywords, one set", "variant": name, "sets": len(one),
                     "seconds_per_set": statistics.median(one)})
        start = time.perf_counter()
        generator.generate_many(sets, seed=0, inflect=True)
        synchronize(device)
        seconds = time.perf_counter() - start
        rows.append({"row": "keywords, --input", "variant": name, "sets": len(sets), "seconds": seconds,
                     "sets_per_s": len(sets) / seconds})
    return rows


def report(rows: list[dict], peak: float | None) -> None:
    baseline: dict[str, dict] = {}
    for row in rows:
        key = f"{row['row']}|{row.get('chains', '')}"
        first = baseline.setdefault(key, row)
        speed = {k: row[k] for k in ("ms_per_step", "seconds", "seconds_per_set") if k in row}
        metric, value = next(iter(speed.items()))
        ratio = first[metric] / value
        line = f"| {row['row']} | {row['variant']} | " + ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "flops_per_step")
        line += f" | {ratio:.2f}x |"
        if peak and "flops_per_step" in row:
            reached = row["flops_per_step"] / (row["ms_per_step"] / 1000)
            line += f" {row['flops_per_step'] / 1e12:.3f} TFLOP/step, {reached / 1e12:.1f} TFLOP/s = " \
                    f"{100 * reached / peak:.1f} % of the bf16 peak |"
        print(line)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU check that every row runs)")
    parser.add_argument("--compile", action="store_true",
                        help="add rows with the encoder under torch.compile, plain and with CUDA graphs "
                             "(mode reduce-overhead), to the diffusion and Gibbs rows")
    parser.add_argument("--sets", type=int, default=64, help="CommonGen dev sets of the --input row")
    parser.add_argument("--batch", type=int, default=None, help="diffusion rows (default 256; 8 with --quick)")
    parser.add_argument("--length", type=int, default=None, help="diffusion tokens and steps (default 128; 16 quick)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["startup", "diffusion", "gibbs", "keywords"])
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    quick = args.quick
    batch, length = args.batch or (8 if quick else 256), args.length or (16 if quick else 128)
    gibbs_chains, gibbs_steps = (8, 5) if quick else (256, 500)
    chain_counts = [4] if quick else [4, 64, 256]
    sets = list(dict.fromkeys(COMMONGEN.read_text().splitlines()))[: (2 if quick else args.sets)]
    device = args.device
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.startswith('cuda') else 'CPU'}), "
          f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}; "
          "random-weight models from the real configs")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        mlm_dir, lm_dir = random_models(Path(tmp))
        if "startup" not in args.skip:
            seconds = startup(lm_dir, mlm_dir, device)
            rows += [{"row": "start-up", "variant": f"{k}", "seconds": v} for k, v in seconds.items()]
        if "diffusion" not in args.skip:
            rows += diffusion(mlm_dir, device, batch, length, args.compile)
        if "gibbs" not in args.skip:
            rows += gibbs(mlm_dir, device, gibbs_chains, gibbs_steps, args.compile)
        if "keywords" not in args.skip:
            rows += keyword_rows(lm_dir, mlm_dir, device, sets, chain_counts, 10 if quick else 100)
    print("| workload | path | measured | speed-up | roofline |\n|---|---|---|---|---|")
    report(rows, peak_flops(device))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
