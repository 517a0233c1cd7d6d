"""Sinusoidal features of the diffusion time ``t ∈ [0, 1]``, shared by every time-conditioned x0 predictor."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def time_features(t: Tensor, dim: int) -> Tensor:
    """``[B, dim]`` sinusoidal features of ``t`` (``[B]``), frequencies geometric from π to 1000π; odd ``dim`` is
    zero-padded."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=t.device, dtype=torch.float32))
    angles = t.float()[:, None] * freqs[None, :] * math.pi
    return torch.nn.functional.pad(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1), (0, dim - 2 * half))
