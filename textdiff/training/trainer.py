"""Training loop for x0 predictors (masking diffusion) and the autoregressive baseline (ALGORITHMS.md §1.4, §2.4).

Objectives: ``mask`` — corrupt with the masking process at ``t ~ U[t_min, 1]`` per example (antithetic option),
cross-entropy on the masked positions (D2; see :mod:`textdiff.udm.loss`), either unweighted (``loss_weighting="udm"``,
the UDM loss: every masked token counts once, so high mask rates dominate) or with the ELBO weights
(``"elbo"``: the per-token continuous-time bound itself, ``η(t) Σ_{i∈M} −log P_i(x0_i) / n``, MDLM's objective —
use it when the model is judged by its ELBO perplexity); ``ar`` — next-token
cross-entropy of a causal model of the same size on the same blocks. Evaluation: the masking ELBO per token
(continuous-time weights ``η(t)``) and the AR NLL per token on held-out blocks, over the same scored tokens.

Engineering: AdamW, linear warm-up + cosine decay, gradient clipping, gradient accumulation, bf16 autocast on CUDA,
tqdm progress, periodic evaluation, atomic checkpoints (model as safetensors via ``save_pretrained``, optimizer and
scheduler via ``torch.save`` of tensors-only state loaded back with ``weights_only=True``, the global RNG state and the
data position in JSON; the corruption RNG is a function of (seed, step, rank)) and exact resume; runs unchanged
under ``torchrun`` (DDP; gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from textdiff.rng import make_generator, worker_seed
from textdiff.training.data import BatchStream, DataPosition, PackingSpec
from textdiff.udm.loss import masked_token_nll, masking_elbo, sample_times, udm_loss
from textdiff.udm.masking import MaskingProcess
from textdiff.udm.process import Batch

OBJECTIVES = ("mask", "ar")
LOSS_WEIGHTINGS = ("udm", "elbo")


@dataclass
class TrainConfig:
    """Hyper-parameters of :class:`Trainer` (saved with every checkpoint)."""

    objective: str = "mask"
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    clip_norm: float = 1.0
    t_min: float = 1e-3
    antithetic: bool = True
    loss_weighting: str = "udm"
    eval_every: int = 200
    eval_blocks: int = 256
    save_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    bf16: bool = True

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        for name in ("batch_size", "grad_accum", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` at ``max_steps``."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def logits_at(model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Logits ``[n, V]`` at the positions ``where``; the output projection is applied only there when the model
    allows it (textdiff denoisers, BERT-style ``cls`` heads), which halves the cost of MLM training."""
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if hasattr(core, "logits_at") and model is core:
        return core.logits_at(ids, attention_mask, where)
    head = getattr(core, "cls", None)
    if head is not None and model is core:
        hidden = core.base_model(input_ids=ids, attention_mask=attention_mask.long()).last_hidden_state
        return head(hidden[where])
    return model(input_ids=ids, attention_mask=attention_mask.long()).logits[where]


def _atomic_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


class Trainer:
    """Trains ``model`` on packed blocks (``dataset`` rows ``input_ids [seq_len]``); see the module docstring."""

    def __init__(self, model: nn.Module, config: TrainConfig, train_dataset, packing: PackingSpec, mask_id: int | None,
                 out_dir: str | Path, eval_dataset=None, device: str | torch.device = "cpu", tokenizer=None,
                 log: Callable[[str], None] = print):
        if config.objective == "mask" and mask_id is None:
            raise ValueError("objective 'mask' needs mask_id (the tokenizer's [MASK] id)")
        self.config, self.packing, self.mask_id, self.tokenizer, self.log = config, packing, mask_id, tokenizer, log
        self.out_dir, self.device = Path(out_dir), torch.device(device)
        self.rank, self.world_size = self._init_distributed()
        self.model = model.to(self.device)
        self.core = model
        if self.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(model)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.process = MaskingProcess(mask_id if mask_id is not None else 0, "linear")
        self.step = 0
        self.stream = BatchStream(train_dataset, config.batch_size, config.seed, self.rank, self.world_size)
        self.history: list[dict] = []

    # -- distributed -------------------------------------------------------------------------------------------
    def _init_distributed(self) -> tuple[int, int]:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
        if world > 1:
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- losses ------------------------------------------------------------------------------------------------
    def _batch(self, ids: torch.Tensor) -> Batch:
        ids = ids.to(self.device)
        return Batch(ids, None, self.packing.protected_mask().to(self.device).expand_as(ids))

    def loss(self, ids: torch.Tensor, generator: torch.Generator, antithetic: bool | None = None):
        """Returns ``(loss, per-sequence ELBO or NLL sum [B], scored tokens [B])`` for one batch."""
        x0 = self._batch(ids)
        if self.config.objective == "ar":
            logits = self.model(input_ids=x0.ids, attention_mask=x0.attention_mask.long()).logits[:, :-1]
            scored = x0.corruptible[:, 1:]
            nll = masked_token_nll(logits, x0.ids[:, 1:]) * scored
            return udm_loss(nll, scored), nll.double().sum(-1), scored.sum(-1)
        antithetic = self.config.antithetic if antithetic is None else antithetic
        t = sample_times(len(ids), generator, self.config.t_min, antithetic, self.device)
        x_t = self.process.corrupt(x0, t, self.process.sample_noise(x0, generator))
        masked = self.process.masked(x_t)
        nll = torch.zeros(x0.ids.shape, dtype=torch.float32, device=self.device)
        nll[masked] = masked_token_nll(logits_at(self.model, x_t.ids, x_t.attention_mask, masked), x0.ids[masked],
                                       self.mask_id)
        elbo, n = masking_elbo(nll, masked, t, x0.corruptible), x0.corruptible.sum(-1)
        loss = udm_loss(nll, masked) if self.config.loss_weighting == "udm" else (elbo.sum() / n.sum()).float()
        return loss, elbo, n

    @torch.no_grad()
    def evaluate(self, dataset=None, max_blocks: int | None = None, repeats: int = 4) -> dict:
        """Held-out bound per token: masking ELBO (``repeats`` antithetic time draws per block) or AR NLL."""
        dataset = self.eval_dataset if dataset is None else dataset
        if dataset is None:
            return {}
        self.model.eval()
        gen = make_generator(1234, device=self.device)
        n = min(len(dataset), max_blocks or self.config.eval_blocks)
        total, tokens = 0.0, 0
        for start in range(0, n, self.config.batch_size):
            ids = dataset[start : min(n, start + self.config.batch_size)]["input_ids"]
            for _ in range(1 if self.config.objective == "ar" else repeats):
                with self._autocast():
                    _, bound, count = self.loss(ids, gen, antithetic=True)
                total += float(bound.sum())
                tokens += int(count.sum())
        self.model.train()
        nll = total / max(tokens, 1)
        return {"eval_nll": nll, "eval_ppl": math.exp(nll), "eval_tokens": tokens}

    def _autocast(self):
        enabled = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def step_generator(self) -> torch.Generator:
        """The corruption RNG of the current step: a function of ``(seed, step, rank)`` only, so resuming (and DDP)
        needs no generator state."""
        return make_generator(worker_seed(self.config.seed * 1_000_003 + self.step, self.rank), device=self.device)

    # -- loop --------------------------------------------------------------------------------------------------
    def train(self, max_steps: int | None = None, progress: bool = True, time_limit: float | None = None) -> list[dict]:
        """Train until ``max_steps`` (default ``config.max_steps``) or ``time_limit`` seconds; returns the log."""
        stop = self.config.max_steps if max_steps is None else max_steps
        self.model.train()
        batches = iter(self.stream)
        bar = None
        if progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop, initial=self.step, desc=f"train {self.config.objective}", unit="step")
        start = time.time()
        while self.step < stop and (time_limit is None or time.time() - start < time_limit):
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            generator = self.step_generator()
            for _ in range(self.config.grad_accum):
                with self._autocast():
                    loss, _, _ = self.loss(next(batches), generator)
                (loss / self.config.grad_accum).backward()
                step_loss += float(loss.detach()) / self.config.grad_accum
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm))
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            record = {"step": self.step, "loss": step_loss, "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0]}
            if self.config.eval_every and self.step % self.config.eval_every == 0 and self.is_main:
                record.update(self.evaluate())
                self.log(json.dumps(record))
            self.history.append(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}")
            if self.config.save_every and self.step % self.config.save_every == 0:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        return self.history

    # -- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint_dir(self, step: int) -> Path:
        return self.out_dir / f"checkpoint-{step:08d}"

    def save_checkpoint(self) -> Path | None:
        """Atomic: everything is written to a temporary directory renamed into place, then ``latest`` is updated."""
        if not self.is_main:
            return None
        final = self.checkpoint_dir(self.step)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.core.save_pretrained(tmp, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(tmp)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   tmp / "optimizer.pt")
        rng = {"torch": torch.get_rng_state().tolist()}  # dropout; corruption RNG is per step (step_generator)
        pos = self.stream.position
        _atomic_json(tmp / "trainer_state.json", {"step": self.step, "data_epoch": pos.epoch, "data_offset": pos.offset,
                                                 "config": asdict(self.config), "rng": rng, "world_size": self.world_size})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _atomic_json(self.out_dir / "latest.json", {"checkpoint": final.name, "step": self.step})
        for old in sorted(self.out_dir.glob("checkpoint-*"))[: -self.config.keep_checkpoints]:
            if not old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Resume from ``path`` or from ``out_dir/latest.json``; returns False when there is nothing to resume."""
        from safetensors.torch import load_file

        if path is None:
            latest = self.out_dir / "latest.json"
            if not latest.exists():
                return False
            path = self.out_dir / json.loads(latest.read_text())["checkpoint"]
        path = Path(path)
        from textdiff.models.denoiser import check_safetensors_dir

        check_safetensors_dir(path)
        state = {}
        for f in sorted(path.glob("*.safetensors")):
            state.update(load_file(f, device=str(self.device)))
        missing, unexpected = self.core.load_state_dict(state, strict=False)
        tied = {k for k in missing if "decoder" in k or "lm_head" in k}
        if unexpected or set(missing) - tied:
            raise ValueError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")
        opt = torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        meta = json.loads((path / "trainer_state.json").read_text())
        self.step = meta["step"]
        self.stream.position = DataPosition(meta["data_epoch"], meta["data_offset"])
        torch.set_rng_state(torch.tensor(meta["rng"]["torch"], dtype=torch.uint8))
        return True
