"""Whether the Triton engine can run on a device or take given tensors, and why not.

Importing this module does not import triton (:func:`unavailable_reason`
imports it on first use only) nor the kernels: :data:`MAX_FUSED_DIM` comes
from the triton-free :mod:`deepres.kernels.plan`.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from deepres.kernels.plan import MAX_FUSED_DIM

__all__ = ["fallback_reason", "interpreter_enabled", "triton_importable", "unavailable_reason"]


@torch.compiler.assume_constant_result
def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set (it must be set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@torch.compiler.assume_constant_result
@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    """True when the ``triton`` package can be imported."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install counts as missing
        return False
    return True


def unavailable_reason(device: torch.device) -> str | None:
    """Why ``backend="triton"`` cannot run on tensors on ``device``, or None if it can.

    The kernels run on CUDA devices, and on the CPU through Triton's
    interpreter when ``TRITON_INTERPRET=1`` was set before triton was imported.
    """
    if not triton_importable():
        return "the triton package is not installed (pip install 'deepres[triton]')"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if interpreter_enabled():
            return None
        return (
            "the tensors are on the CPU and no CUDA device is used; set TRITON_INTERPRET=1 "
            "before importing triton to run the kernels in Triton's (slow) interpreter"
        )
    return f"the Triton kernels run on CUDA devices only; the tensors are on {device.type}"


def fallback_reason(h: torch.Tensor, u: torch.Tensor) -> str | None:
    """Why the fused kernels cannot take these tensors (so the PyTorch engine runs), or None.

    Call only where triton is importable.

    Args:
        h: (R, B, D) or (B, D). u: (R, L, M, D) or (L, M, D).

    Returns:
        A sentence naming the limit and the received value, or None.

    Example:
        >>> fallback_reason(torch.zeros(1, 2, 300), torch.zeros(1, 3, 4, 300))
        'D = 300 exceeds the largest fused embedding dimension, 256'
    """
    dim = h.shape[-1]
    limit = MAX_FUSED_DIM
    if dim > limit:
        return f"D = {dim} exceeds the largest fused embedding dimension, {limit}"
    if h.dtype != torch.float32:
        return f"the kernels compute in float32 and h is {h.dtype}"
    return None
