"""Argument checks shared by the public API: each error names the argument,
what was expected and what was received.

One checker per kind of decision: a choice among names (:func:`check_choice`),
a flag (:func:`check_bool`), a positive int, a finite real, a tensor, and the
checkpoint policy (:func:`resolve_checkpoint_every`). A non-str choice or a
non-bool flag is a ``TypeError``; a str or number outside the allowed set is a
``ValueError``.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = [
    "BACKSOLVE",
    "check_bool",
    "check_choice",
    "check_finite_real",
    "check_positive_int",
    "check_tensor",
    "resolve_checkpoint_every",
]


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of the strings ``choices``, else raise.

    Raises:
        TypeError: ``value`` is not a str.
        ValueError: ``value`` is not one of ``choices``.

    Example:
        >>> check_choice("rk4", "solver", ("euler", "rk4"))
        'rk4'
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {choices}; got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    return value


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a bool, else raise a ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__} {value!r}")
    return value


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int ≥ 1 (bool excluded), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int; got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def check_finite_real(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number, else raise.

    A 0-dim tensor that does not require grad is accepted (its value is read
    once); one that requires grad is refused, since the value would be
    detached and no gradient would reach it. A bool is not a number here.

    Under ``torch.compile`` the value is returned unchecked: dynamo turns a
    float that changes between calls into a symbolic input of the graph,
    whose value cannot be inspected while tracing. Eager calls check it, and
    the modules check their scalars when they are built.
    """
    if torch.compiler.is_compiling():
        return value  # type: ignore[return-value]
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dim() != 0:
            raise TypeError(f"{name} must be a real number; got a tensor of shape {tuple(value.shape)}")
        if value.requires_grad:
            raise TypeError(f"{name} must be a real number, not a tensor that requires grad: {name} is "
                            f"a constant of the model and no gradient flows to it")
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


#: The resolved value of ``checkpoint_every="backsolve"`` (the mean ODE's adjoint route: keep no
#: states, re-integrate h backward). Every layer below the modules compares against this one name.
BACKSOLVE = -1


def resolve_checkpoint_every(depth: int, checkpoint_every: object, *, backsolve: bool = False) -> int:
    """Turn a ``checkpoint_every`` option into a segment length k ≥ 1 (or :data:`BACKSOLVE`).

    One meaning per form, the same for every engine and the mean ODE:

    * ``None`` — the default: keep h before every layer, k = 1;
    * an int k ≥ 1 — keep h every k layers and recompute each segment in
      the backward pass (k need not divide L; k ≥ L keeps h_0 only);
    * ``"sqrt"`` — k = ⌈√L⌉, which minimizes the (L/k + k)·B·D numbers kept;
    * ``"backsolve"`` — where allowed: keep nothing (:data:`BACKSOLVE`).

    Args:
        depth: number of layers L (or solver steps N).
        checkpoint_every: one of the forms above.
        backsolve: accept ``"backsolve"`` (the mean ODE's adjoint route).
            Default False.

    Returns:
        The segment length k ≥ 1, or :data:`BACKSOLVE`. An int k > ``depth`` gives
        ``depth`` (one segment either way): the ops take k as a 64-bit int, which
        ``10**30`` would overflow.

    Raises:
        TypeError: not None, an int or a str.
        ValueError: an int < 1 or an unknown string.

    Example:
        >>> resolve_checkpoint_every(100, "sqrt"), resolve_checkpoint_every(100, None)
        (10, 1)
    """
    names = ("sqrt", "backsolve") if backsolve else ("sqrt",)
    expected = "None, a positive int or " + " or ".join(repr(n) for n in names)
    if checkpoint_every is None:
        return 1
    if isinstance(checkpoint_every, str):
        if checkpoint_every not in names:
            raise ValueError(f"checkpoint_every must be {expected}; got {checkpoint_every!r}")
        return BACKSOLVE if checkpoint_every == "backsolve" else max(1, math.ceil(math.sqrt(depth)))
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, numbers.Integral):
        raise TypeError(f"checkpoint_every must be {expected}; "
                        f"got {type(checkpoint_every).__name__} {checkpoint_every!r}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be {expected}; got {checkpoint_every!r}")
    return int(min(checkpoint_every, max(depth, 1)))
