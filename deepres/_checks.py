"""Argument checks shared by the public API: each error names the argument,
what was expected and what was received."""

from __future__ import annotations

import math
import numbers

import torch

__all__ = [
    "check_finite_real",
    "check_positive_int",
    "check_tensor",
]


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int ≥ 1 (bool excluded), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int; got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def check_finite_real(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number, else raise.

    A 0-dim tensor is accepted; a bool is not.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dim() != 0:
            raise TypeError(f"{name} must be a real number; got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return value


def check_tensor(value: object, name: str) -> torch.Tensor:
    """Return ``value`` if it is a floating-point tensor with no empty axis, else raise."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype; got {value.dtype}")
    if value.numel() == 0:
        raise ValueError(f"{name} must have positive sizes; got shape {tuple(value.shape)}")
    return value
