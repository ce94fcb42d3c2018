"""How a module tells optimizers the parameterization's scaling of its parameters.

A parameterization (:class:`deepres.Parameterization`) fixes a learning-rate
multiplier for the trained weights: plain gradient descent updates each of
them by ``w ← w − η · lr_multiplier · ∂loss/∂w``. Training code must know that
multiplier for every parameter, and whether the parameter's leading axis
holds independent replicas. This module makes that an explicit interface:

* a module that owns scaled parameters implements
  ``scaled_parameters(self) -> Iterable[ScaledParameter]`` for its *own*
  parameters (not its children's): :class:`deepres.ResidualStack`,
  :class:`deepres.DeepResNet`, :class:`deepres.MeanODE` and
  :class:`deepres.MeanODENet` do, and third-party modules can;
* :func:`scaled_parameters` walks a whole model and returns one
  :class:`ScaledParameter` per trainable parameter: the module's own record
  where it has one, multiplier 1 (role ``"other"``) for every other parameter.

:func:`deepres.gradient_descent_step`, :func:`deepres.train` and the
optimizer parameter groups all read the multipliers from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from deepres.parameterization import Parameterization

__all__ = ["ROLES", "ScaledModule", "ScaledParameter", "scaled_parameters"]

#: What a parameter is to the network: ``"u"``/``"v"`` the input/output weights of
#: the residual blocks (or the limit's particles), ``"embedding"`` W_E,
#: ``"readout"`` W_U, ``"other"`` a parameter deepres does not scale.
ROLES: tuple[str, ...] = ("u", "v", "embedding", "readout", "other")


@dataclass(frozen=True)
class ScaledParameter:
    """One trainable parameter and the scaling of its updates.

    Attributes:
        name: the parameter's name (relative to the module that reported it;
            :func:`scaled_parameters` makes it the full dotted name in the model).
        parameter: the ``nn.Parameter``.
        lr_multiplier: the plain-gradient-descent multiplier: a float, or a
            tensor that broadcasts against the parameter (e.g. (nodes, 1, 1),
            one value per depth node of a MeanODE).
        role: one of :data:`ROLES`.
        parameterization: the scheme the multiplier comes from, or None for a
            parameter the parameterization does not scale (multiplier 1).
        replica_axis: the leading axis indexes independent replicas (one
            network each), so per-replica updates may be masked along it.
    """

    name: str
    parameter: nn.Parameter
    lr_multiplier: float | torch.Tensor
    role: str
    parameterization: Parameterization | None = None
    replica_axis: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}; got {self.role!r}")
        if not isinstance(self.parameter, torch.Tensor):
            raise TypeError(f"parameter must be a tensor; got {type(self.parameter).__name__}")


@runtime_checkable
class ScaledModule(Protocol):
    """A module that reports the scaling of its own parameters (see the module docstring)."""

    def scaled_parameters(self) -> Iterable[ScaledParameter]:
        """One record per parameter the module owns directly (``recurse=False``)."""
        ...


def scaled_parameters(model: nn.Module) -> Iterator[ScaledParameter]:
    """Every trainable parameter of ``model`` with its scaling, in ``named_parameters`` order.

    Args:
        model: any ``nn.Module``; submodules that implement
            ``scaled_parameters()`` (:class:`ScaledModule`) give their own
            records, every other trainable parameter gets multiplier 1 and role
            ``"other"``.

    Returns:
        An iterator of :class:`ScaledParameter` with full dotted names; a
        parameter shared by several modules appears once.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a module reports a parameter it does not own.

    Example:
        >>> import torch, deepres
        >>> net = deepres.DeepResNet(5, 5, depth=8, dim=4, hidden=2)
        >>> [(s.name, s.role, s.lr_multiplier) for s in scaled_parameters(net)]
        [('stack.u', 'u', 64.0), ('stack.v', 'v', 64.0)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    reported: dict[int, ScaledParameter] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, ScaledModule):
            continue
        own = {id(p) for p in module.parameters(recurse=False)}
        for record in module.scaled_parameters():
            if id(record.parameter) not in own:
                raise ValueError(f"{type(module).__name__}.scaled_parameters() reported {record.name!r}, "
                                 f"which is not a parameter of that module")
            full = f"{module_name}.{record.name}" if module_name else record.name
            reported.setdefault(id(record.parameter), replace(record, name=full))
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        record = reported.get(id(param))
        yield record if record is not None else ScaledParameter(name, param, 1.0, "other")
