"""Full-batch gradient descent with the parameterization's learning-rate multipliers.

The convention, shared by every model of deepres: a module that owns trained
weights ``u`` and ``v`` carries an attribute ``lr_multiplier`` (a float, or a
tensor that broadcasts against ``u``, e.g. one value per depth node of a
MeanODE). One step updates each trained weight w by

    w ← w − η · lr_multiplier · ∂loss/∂w,

where the multiplier is that of the module owning w, and 1 for trained
weights of modules without one (a trained embedding or readout).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["gradient_descent_step", "lr_multipliers"]


def lr_multipliers(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, float | torch.Tensor]]:
    """Yield (name, parameter, lr multiplier) for every trainable parameter of ``model``."""
    for module_name, module in model.named_modules():
        multiplier = getattr(module, "lr_multiplier", None)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{name}" if module_name else name
            yield full, param, (1.0 if multiplier is None else multiplier)


@torch.no_grad()
def gradient_descent_step(model: nn.Module, eta: float) -> None:
    """Apply ``w ← w − η · lr_multiplier · w.grad`` to every parameter that has a gradient.

    Args:
        model: the module whose ``.grad`` fields were filled by ``backward()``.
        eta: the base learning rate η.
    """
    for _, param, multiplier in lr_multipliers(model):
        if param.grad is None:
            continue
        if isinstance(multiplier, torch.Tensor):
            param.sub_(param.grad * multiplier.to(param.device, param.dtype), alpha=eta)
        else:
            param.sub_(param.grad, alpha=eta * multiplier)
