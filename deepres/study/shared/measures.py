"""Measurements both studies take: the lazy-ODE flow and per-replica RMS.

The lazy ODE of a residual stack keeps every block linear in its own weights
around the initial ones (u0, v0), the blocks still composed:

    h ← h + c·[σ(a·h u0ᵀ) v + (σ'(a·h u0ᵀ) ⊙ a·h (u − u0)ᵀ) v0]

(the model of :class:`deepres.study.convergence.lazy.BlockLinearizedNet`, and of
:func:`deepres.study.phase.family.block_linearized_features` for the phase family's
scales).
"""

from __future__ import annotations

import torch

from deepres.activations import activation_and_derivative

__all__ = ["lazy_flow", "replica_rms"]


def lazy_flow(h: torch.Tensor, u0: torch.Tensor, v0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, *,
              multiplier: float, pre_scale: float, activation: str) -> torch.Tensor:
    """h_L of the lazy ODE (see the module docstring); plain autograd, differentiable in u and v.

    Args:
        h: the stream's input h_0, (R, N, D). u0, v0: the initial weights, (R, L, M, D).
        u, v: the current weights, (R, L, M, D). multiplier: c. pre_scale: a.
        activation: σ's name (:data:`deepres.activations.ACTIVATIONS`).

    Returns:
        (R, N, D).

    Example:
        >>> u0, v0 = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
        >>> h0 = torch.randn(2, 6, 5)
        >>> lazy_flow(h0, u0, v0, u0, v0, multiplier=0.1, pre_scale=0.2, activation="tanh").shape
        torch.Size([2, 6, 5])
    """
    for bu0, bv0, bu, bv in zip(u0.unbind(-3), v0.unbind(-3), u.unbind(-3), v.unbind(-3), strict=True):
        s, ds = activation_and_derivative(activation, pre_scale * (h @ bu0.transpose(-1, -2)))
        tangent = ds * (pre_scale * (h @ (bu - bu0).transpose(-1, -2)))
        h = h + multiplier * (s @ bv + tangent @ bv0)
    return h


def replica_rms(t: torch.Tensor) -> torch.Tensor:
    """RMS over every axis but the first (the replica), in ``t``'s dtype.

    Args:
        t: (R, ...).

    Returns:
        (R,).

    Example:
        >>> replica_rms(torch.tensor([[3.0, 4.0], [0.0, 0.0]]) * 2 ** 0.5)
        tensor([5., 0.])
    """
    return t.pow(2).flatten(1).mean(1).sqrt()
