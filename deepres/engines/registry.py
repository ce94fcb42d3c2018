"""The one table of engines: what each computes, where it runs, and how to call it.

:func:`deepres.functional.residual_stack` and the modules resolve their
options against this table (:func:`deepres.functional.stack_options`) and
dispatch through it; a new engine is one more :class:`Engine` entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from deepres.engines import triton as triton_engine
from deepres.engines.cpp_build import cpp_unavailable_reason
from deepres.engines.cpp_engine import cpp_refusal, cpp_residual_stack
from deepres.engines.reference import reference_residual_stack
from deepres.engines.torch_engine import torch_residual_stack
from deepres.kernels.plan import DEFAULT_PRECISION, PRECISIONS

__all__ = ["ENGINES", "PRECISIONS", "Engine", "unavailable_reason"]


def _anywhere(device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class Engine:
    """One engine of the stack.

    Attributes:
        name: its ``backend`` name.
        run: ``(h, u, v, c, a, activation, every, precision) → h_L`` on
            replica-form tensors (h (R, B, D), u and v (R, L, M, D)), trusting
            its arguments; ``precision`` is one of ``precisions``.
        precisions: the dot-product precisions it computes (names of
            :data:`deepres.kernels.plan.PRECISIONS`); the first is its default.
        unavailable_reason: device ↦ why it cannot run there, or None.
        fallback_reason: (h, u) ↦ why it cannot take these tensors (the
            PyTorch engine runs them instead), or None.
        half_weights: it reads float32 weights in the autocast dtype inside
            an autocast region (tensor cores); the others compute in float32.
        refuses_unfit: asked for by name, it refuses tensors it cannot take
            (a ValueError naming ``fallback_reason``'s reason) instead of
            running the PyTorch engine with a warning.
    """

    name: str
    run: Callable[..., torch.Tensor]
    precisions: tuple[str, ...]
    unavailable_reason: Callable[[torch.device], str | None] = _anywhere
    fallback_reason: Callable[[torch.Tensor, torch.Tensor], str | None] | None = None
    half_weights: bool = False
    refuses_unfit: bool = False

    @property
    def default_precision(self) -> str:
        """What ``precision=None`` computes."""
        return self.precisions[0]


def _torch(h, u, v, c, a, activation, every, precision):
    return torch_residual_stack(h, u, v, c, a, activation, every)


def _cpp(h, u, v, c, a, activation, every, precision):
    return cpp_residual_stack(h, u, v, c, a, activation, every)


def _cpp_unavailable(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"the C++ engine runs on CPU tensors; the tensors are on {device.type}"
    return cpp_unavailable_reason()  # builds the engine at its first use


def _reference(h, u, v, c, a, activation, every, precision):
    return reference_residual_stack(h, u, v, c, a, activation)


#: ``backend`` name → :class:`Engine` (``"auto"`` is not an engine: it chooses one).
ENGINES: dict[str, Engine] = {
    # The PyTorch engine and the reference compute IEEE arithmetic in h's dtype.
    "torch": Engine("torch", _torch, ("ieee",)),
    "triton": Engine("triton", triton_engine.triton_residual_stack,
                     (DEFAULT_PRECISION, *(p for p in PRECISIONS if p != DEFAULT_PRECISION)),
                     triton_engine.unavailable_reason, triton_engine.fallback_reason, half_weights=True),
    # The compiled CPU loops (float32/float64 CPU tensors; deepres.engines.cpp_engine).
    "cpp": Engine("cpp", _cpp, ("ieee",), _cpp_unavailable, cpp_refusal, refuses_unfit=True),
    "reference": Engine("reference", _reference, ("ieee",)),
}


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on tensors on ``device`` at all, or None if it can.

    ``"auto"`` always runs (it picks an engine that can). This is the sentence
    :func:`deepres.functional.check_backend` puts in its error, for command
    lines that report it in their own words.

    Args:
        backend: ``"auto"`` or a name of :data:`ENGINES`.
        device: where the tensors are.

    Returns:
        A sentence, or None.

    Example:
        >>> unavailable_reason("torch", torch.device("cpu")) is None
        True
    """
    return None if backend == "auto" else ENGINES[backend].unavailable_reason(device)
