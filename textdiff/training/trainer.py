"""Training loop for x0 predictors of the masking process and the autoregressive baseline (docs/training.md).

Objectives: ``mask`` (cross-entropy on the masked positions at a mask rate ``t ~ U[t_min, 1]``, weighted as the UDM
loss or as the ELBO, see docs/training.md, "Loss") and ``ar`` (next-token cross-entropy of a causal model). Evaluation
reports the held-out bound per token over the same scored tokens for both. Every step yields a :class:`Loss` record;
a non-finite loss, gradient or weight stops training with :class:`TrainingDiverged` before anything non-finite is
saved. Checkpoints are atomic and resume is exact (:mod:`textdiff.training.checkpoint`); runs unchanged under
``torchrun`` (DDP; gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from textdiff import checks
from textdiff.rng import SEED_LIMIT, make_generator, worker_seed
from textdiff.training.checkpoint import (
    CheckpointState,
    CorruptCheckpoint,
    atomic_json,
    checkpoints,
    read_checkpoint,
    resume_candidates,
    write_checkpoint,
)
from textdiff.training.data import BatchStream, DataPosition, PackingSpec
from textdiff.training.records import Evaluation, Loss, TrainingDiverged
from textdiff.udm.loss import masked_token_nll, masking_elbo, sample_times, udm_loss
from textdiff.udm.masking import MaskingProcess
from textdiff.udm.process import Batch

OBJECTIVES = ("mask", "ar")
LOSS_WEIGHTINGS = ("udm", "elbo")


@dataclass
class TrainConfig:
    """Hyper-parameters of :class:`Trainer` (saved with every checkpoint); every field is checked on creation and a
    bad one raises ``ValueError``/``TypeError`` naming it and its allowed range."""

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
        checks.one_of("objective", self.objective, OBJECTIVES)
        checks.one_of("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        for name in ("batch_size", "grad_accum", "max_steps", "eval_blocks", "keep_checkpoints"):
            checks.positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "eval_every", "save_every", "seed"):
            checks.positive_int(name, getattr(self, name), minimum=0)
        if self.seed >= SEED_LIMIT:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed}")
        self.lr = checks.positive_float("lr", self.lr)
        self.clip_norm = checks.positive_float("clip_norm", self.clip_norm)
        self.weight_decay = checks.finite_float("weight_decay", self.weight_decay, low=0.0)
        self.min_lr_ratio = checks.finite_float("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        self.t_min = checks.finite_float("t_min", self.t_min, low=0.0, high=1.0, high_open=True)
        for name in ("antithetic", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")


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


class Trainer:
    """Trains ``model`` on packed blocks (``dataset`` rows ``input_ids [seq_len]``); see the module docstring.

    ``log`` receives human-readable notices (e.g. a checkpoint skipped on resume); ``record`` receives the
    :class:`Loss` of every evaluation step. ``device`` is checked with :func:`textdiff.checks.device`.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_dataset, packing: PackingSpec, mask_id: int | None,
                 out_dir: str | Path, eval_dataset=None, device: str | torch.device = "cpu", tokenizer=None,
                 log: Callable[[str], None] = print, record: Callable[[Loss], None] | None = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if config.objective == "mask" and mask_id is None:
            raise ValueError("objective 'mask' needs mask_id (the tokenizer's [MASK] id)")
        if eval_dataset is not None and len(eval_dataset) == 0:
            raise ValueError(f"eval_dataset holds no complete block of {packing.seq_len} tokens; give more held-out "
                             "text or a shorter sequence length")
        if Path(out_dir).exists() and not Path(out_dir).is_dir():
            raise ValueError(f"out_dir {out_dir} exists and is not a directory")
        self.config, self.packing, self.mask_id, self.tokenizer = config, packing, mask_id, tokenizer
        self.log, self.record = log, record
        self.out_dir, self.device = Path(out_dir), checks.device(device)
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
        self.history: list[Loss] = []
        self.last_checkpoint: Path | None = None

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

    @property
    def tokens_seen(self) -> int:
        """Training tokens consumed by all processes up to the current step."""
        c = self.config
        return self.step * c.batch_size * c.grad_accum * self.world_size * self.packing.seq_len

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
    def evaluate(self, dataset=None, max_blocks: int | None = None, repeats: int = 4) -> Evaluation | None:
        """Held-out bound per token over the first ``max_blocks`` (default ``config.eval_blocks``) blocks: masking
        ELBO (``repeats`` antithetic time draws per block) or AR NLL; ``None`` when there is no evaluation data."""
        dataset = self.eval_dataset if dataset is None else dataset
        if dataset is None:
            return None
        limit = self.config.eval_blocks if max_blocks is None else checks.positive_int("max_blocks", max_blocks)
        checks.positive_int("repeats", repeats)
        n = min(len(dataset), limit)
        if n == 0:
            raise ValueError("the evaluation dataset is empty")
        self.model.eval()
        gen = make_generator(1234, device=self.device)
        total, tokens = 0.0, 0
        for start in range(0, n, self.config.batch_size):
            ids = dataset[start : min(n, start + self.config.batch_size)]["input_ids"]
            for _ in range(1 if self.config.objective == "ar" else repeats):
                with self._autocast():
                    _, bound, count = self.loss(ids, gen, antithetic=True)
                total += float(bound.sum())
                tokens += int(count.sum())
        self.model.train()
        if tokens == 0:
            raise ValueError(f"the evaluation blocks hold no scored token (only block specials); use a longer "
                             f"sequence length than {self.packing.seq_len}")
        if not math.isfinite(total):
            raise TrainingDiverged(f"training diverged at step {self.step}: the held-out bound is {total}; "
                                   f"{self._last_good()}")
        return Evaluation(total / tokens, tokens)

    def _autocast(self):
        enabled = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def step_generator(self) -> torch.Generator:
        """The corruption RNG of the current step: a function of ``(seed, step, rank)`` only, so resuming (and DDP)
        needs no generator state."""
        return make_generator(worker_seed(self.config.seed * 1_000_003 + self.step, self.rank), device=self.device)

    # -- loop --------------------------------------------------------------------------------------------------
    def train(self, max_steps: int | None = None, progress: bool = True, time_limit: float | None = None) -> list[Loss]:
        """Train until ``max_steps`` (default ``config.max_steps``) or ``time_limit`` seconds; returns the records of
        all steps taken by this trainer. Raises :class:`TrainingDiverged` (weights not updated) at a non-finite loss
        or gradient norm."""
        stop = self.config.max_steps if max_steps is None else checks.positive_int("max_steps", max_steps)
        if time_limit is not None:
            checks.positive_float("time_limit", time_limit)
        self.model.train()
        batches = iter(self.stream)
        bar = None
        if progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop, initial=self.step, desc=f"train {self.config.objective}", unit="step")
        start = time.time()
        try:
            while self.step < stop and (time_limit is None or time.time() - start < time_limit):
                record = self._train_step(batches)
                self.history.append(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record.loss:.3f}")
                if self.config.save_every and self.step % self.config.save_every == 0:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def _train_step(self, batches) -> Loss:
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        generator = self.step_generator()
        for _ in range(self.config.grad_accum):
            with self._autocast():
                loss, _, _ = self.loss(next(batches), generator)
            (loss / self.config.grad_accum).backward()
            step_loss += float(loss.detach()) / self.config.grad_accum
        grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm))
        self._stop_if_non_finite(step_loss, grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        due = self.is_main and bool(self.config.eval_every) and self.step % self.config.eval_every == 0
        record = Loss(self.step, step_loss, grad_norm, lr, self.tokens_seen, self.evaluate() if due else None)
        if due and self.record is not None:
            self.record(record)
        return record

    def _stop_if_non_finite(self, loss: float, grad_norm: float) -> None:
        """:class:`TrainingDiverged` unless the loss and the gradient norm are finite on every process."""
        bad = torch.tensor(float(not (math.isfinite(loss) and math.isfinite(grad_norm))), device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item():
            raise TrainingDiverged(f"training diverged at step {self.step + 1}: the loss is {loss}, the gradient "
                                   f"norm {grad_norm}; stopped before updating the weights; {self._last_good()}")

    def _last_good(self) -> str:
        hint = "lower the learning rate, or check the data and the initial weights"
        if self.last_checkpoint is None:
            return f"no checkpoint was saved ({hint})"
        return f"the last good checkpoint is {self.last_checkpoint} ({hint})"

    # -- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint_dir(self, step: int) -> Path:
        return self.out_dir / f"checkpoint-{step:08d}"

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of the current step atomically, then point ``latest.json`` at it and prune old ones.
        Non-finite weights are never saved (:class:`TrainingDiverged`)."""
        if not self.is_main:
            return None
        bad = [name for name, p in self.core.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingDiverged(f"training diverged at step {self.step}: non-finite weights "
                                   f"({', '.join(bad[:3])}) were not saved; {self._last_good()}")
        pos = self.stream.position
        meta = {"step": self.step, "data_epoch": pos.epoch, "data_offset": pos.offset, "config": asdict(self.config),
                "rng": {"torch": torch.get_rng_state().tolist()},  # dropout; corruption RNG is per step
                "world_size": self.world_size}
        final = write_checkpoint(self.checkpoint_dir(self.step), self.core, self.tokenizer, self.optimizer,
                                 self.scheduler, meta)
        atomic_json(self.out_dir / "latest.json", {"checkpoint": final.name, "step": self.step})
        self.last_checkpoint = final
        for old in checkpoints(self.out_dir)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Resume from checkpoint ``path``, or else from the newest intact checkpoint of ``out_dir`` (the one
        ``latest.json`` names first; an unreadable one is skipped with a notice to ``log``). Returns False when
        ``out_dir`` holds no checkpoint; ``ValueError`` when none is intact or one does not fit the model."""
        if path is not None:
            self._apply(read_checkpoint(path, self.device))
            return True
        skipped: list[str] = []
        for candidate in resume_candidates(self.out_dir):
            try:
                state = read_checkpoint(candidate, self.device)
            except CorruptCheckpoint as err:
                skipped.append(str(err))
                continue
            if skipped:
                self.log(f"resuming from the older {candidate}; skipped: {'; '.join(skipped)}")
            self._apply(state)
            return True
        if skipped:
            raise CorruptCheckpoint(f"no intact checkpoint to resume from in {self.out_dir} ({'; '.join(skipped)}); "
                                    "start afresh in another directory (CLI: --no-resume or another --out)")
        return False

    def _apply(self, state: CheckpointState) -> None:
        """Load ``state`` into the model, optimizer, scheduler, data stream and RNG, after checking that it fits."""
        own = self.core.state_dict()
        tied = ("decoder", "lm_head")  # tied output weights are not stored separately
        problems = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} here"
                    for k, v in state.model.items() if k in own and v.shape != own[k].shape]
        problems += [f"unexpected {k}" for k in sorted(set(state.model) - set(own))]
        problems += [f"missing {k}" for k in sorted(set(own) - set(state.model)) if not any(t in k for t in tied)]
        if problems:
            raise ValueError(f"checkpoint {state.path} was saved from a different model ({'; '.join(problems[:3])}"
                             f"{' ...' if len(problems) > 3 else ''}); resume with the model options it was trained "
                             "with (its config.json), or start a new run directory")
        self.core.load_state_dict(state.model, strict=False)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.step = state.meta["step"]
        self.stream.position = DataPosition(state.meta["data_epoch"], state.meta["data_offset"])
        torch.set_rng_state(state.rng)
        self.last_checkpoint = state.path
