"""Unified Diffusion Model (UDM) on token sequences: forward processes, the generic reverse loop, losses."""

from textdiff.udm.deletion import DeletionProcess
from textdiff.udm.loss import (
                              masked_token_nll,
                              masking_elbo,
                              masking_elbo_weight,
                              replace_diff_elbo,
                              sample_times,
                              udm_loss,
)
from textdiff.udm.masking import MaskingProcess
from textdiff.udm.process import (
                              Batch,
                              CosineSchedule,
                              CountSchedule,
                              ForwardProcess,
                              LinearSchedule,
                              LogLinearSchedule,
                              Noise,
                              PositionLogits,
                              Schedule,
                              StepPlan,
                              X0Draw,
                              as_batch,
                              get_schedule,
                              time_grid,
)
from textdiff.udm.registry import PROCESSES, make_process, process_names, register_process
from textdiff.udm.replacement import ReplaceAnyProcess, ReplaceDiffProcess
from textdiff.udm.sampler import (
                              PredictorCache,
                              SampleResult,
                              SampleStats,
                              Trajectory,
                              forbid_tokens,
                              make_template,
                              reverse_sample,
)

__all__ = [
    "PROCESSES", "Batch", "CosineSchedule", "CountSchedule", "DeletionProcess", "ForwardProcess", "LinearSchedule",
    "LogLinearSchedule", "MaskingProcess", "Noise", "PositionLogits", "PredictorCache", "ReplaceAnyProcess",
    "ReplaceDiffProcess", "SampleResult", "SampleStats", "Schedule", "StepPlan", "Trajectory", "X0Draw", "as_batch",
    "forbid_tokens", "get_schedule", "make_process", "make_template", "masked_token_nll", "masking_elbo",
    "masking_elbo_weight", "process_names", "register_process", "replace_diff_elbo", "reverse_sample", "sample_times",
    "time_grid", "udm_loss",
]
