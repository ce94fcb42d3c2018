"""Shared helpers for the tests: random inputs and relative errors."""

from __future__ import annotations

import torch


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ (in float64)."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    return ((out64 - ref64).norm() / ref64.norm()).item()


def random_stack_inputs(batch, dim, hidden, depth, replicas=None, *, dtype=torch.float64, seed=0,
                        scale=1.0):
    """Fresh N(0, scale²) h, u, v with requires_grad, in the shapes residual_stack takes."""
    generator = torch.Generator().manual_seed(seed)
    weight_shape = (depth, hidden, dim) if replicas is None else (replicas, depth, hidden, dim)
    h_shape = (batch, dim) if replicas is None else (replicas, batch, dim)

    def draw(shape):
        return (scale * torch.randn(shape, generator=generator, dtype=dtype)).requires_grad_()

    return draw(h_shape), draw(weight_shape), draw(weight_shape)
