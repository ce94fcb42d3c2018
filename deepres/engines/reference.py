"""The plain per-layer reference: eq. (1) written with ordinary autograd and PyTorch's own
activations (:data:`deepres.activations.TORCH_ACTIVATIONS`).

It is the oracle the fused engines are tested against and the "what a user
would write" baseline of the benchmarks. It keeps every intermediate autograd
needs (about L·B·(D + M) numbers for tanh), so it is not memory-efficient.
"""

from __future__ import annotations

import torch

from deepres.activations import TORCH_ACTIVATIONS
from deepres.engines.common import autocast_disabled

__all__ = ["reference_residual_stack"]


def reference_residual_stack(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float,
                             pre_scale: float, activation: str) -> torch.Tensor:
    """h_L of eq. (1) by a plain loop over layers, differentiable by autograd.

    Args:
        h: (B, D), or (R, B, D) with replicas.
        u, v: (L, M, D), or (R, L, M, D) with replicas.
        multiplier: c. pre_scale: a. activation: a name of
            :data:`deepres.activations.ACTIVATIONS`.

    Returns:
        h_L, same shape as ``h``.
    """
    # unbind gives one autograd node for all layers: its backward stacks the
    # per-layer gradients once, instead of one full-size zero tensor per slice.
    with autocast_disabled(h.device.type):  # the residual stream stays in h's precision
        layers_u = u.unbind(dim=-3)
        layers_v = v.unbind(dim=-3)
        for u_l, v_l in zip(layers_u, layers_v, strict=True):
            z = pre_scale * (h @ u_l.to(h.dtype).transpose(-1, -2))
            h = h + multiplier * (TORCH_ACTIVATIONS[activation](z) @ v_l.to(h.dtype))
        return h
