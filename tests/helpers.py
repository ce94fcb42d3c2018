"""Shared helpers for the tests: random inputs, relative errors, a tiny study."""

from __future__ import annotations

import torch


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; the absolute error ‖out − ref‖ where ‖ref‖ = 0.

    A zero reference is a legitimate answer (relu with every unit off has exactly zero
    weight gradients): dividing by its norm would give 0/0 = NaN, which fails every
    tolerance although ``out`` is exact. The shapes must match: nothing is broadcast.
    """
    if out.shape != ref.shape:
        raise ValueError(f"out and ref must have one shape; got {tuple(out.shape)} and {tuple(ref.shape)}")
    out64, ref64 = out.detach().double(), ref.detach().double()
    error, scale = (out64 - ref64).norm().item(), ref64.norm().item()
    return error / scale if scale > 0 else error


def random_stack_inputs(batch, dim, hidden, depth, replicas=None, *, dtype=torch.float64, seed=0,
                        scale=1.0):
    """Fresh N(0, scale²) h, u, v with requires_grad, in the shapes residual_stack takes."""
    generator = torch.Generator().manual_seed(seed)
    weight_shape = (depth, hidden, dim) if replicas is None else (replicas, depth, hidden, dim)
    h_shape = (batch, dim) if replicas is None else (replicas, batch, dim)

    def draw(shape):
        return (scale * torch.randn(shape, generator=generator, dtype=dtype)).requires_grad_()

    return draw(h_shape), draw(weight_shape), draw(weight_shape)


# Small but complete: every kind of unit, about ten seconds on a 2-core CPU.
TINY = {"depths": [2, 4], "widths": [1], "replicas": 4, "particles": 32, "grid_steps": 4, "limit_sets": 2,
        "steps": [2], "records": 2, "lazy_alphas": [1.0], "lazy_depth": 2, "lazy_hidden": 2,
        "lazy_replicas": 2, "bootstrap": 20, "samples": 6}
TINY_FLAGS = ["--depths", "2,4", "--widths", "1", "--replicas", "4", "--particles", "32", "--grid-steps", "4",
              "--limit-sets", "2", "--steps", "2", "--records", "2", "--lazy-alphas", "1", "--lazy-depth", "2",
              "--lazy-hidden", "2", "--lazy-replicas", "2", "--bootstrap", "20", "--samples", "6",
              "--no-progress", "--no-plots"]
