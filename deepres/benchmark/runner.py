"""What every benchmark provider implements: a :class:`Provider` builds a :class:`Runner`.

A :class:`Provider` turns a case's inputs into a :class:`Runner` whose ``step()``
runs one forward pass (``mode="forward"``, under ``torch.no_grad()``: inference)
or one training step (``mode="train"``: forward, loss = Σ probe ⊙ output,
backward to every weight). The helpers below are shared by the providers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from deepres.activations import TORCH_ACTIVATIONS
from deepres.benchmark.case import Case, Inputs

__all__ = ["Provider", "Runner", "adopt_weights", "leaf", "per_network", "stack_replicas", "user_activation"]


def user_activation(name: str, z: torch.Tensor) -> torch.Tensor:
    """σ(z) with PyTorch's own function, as the baselines (eager, compile, autograd loops) use it.

    Example:
        >>> float(user_activation("relu", torch.tensor(-1.0)))
        0.0
    """
    return TORCH_ACTIVATIONS[name](z)


def leaf(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` that is a leaf requiring grad."""
    return t.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)


def per_network(case: Case, inputs: Inputs) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(h0, u, v) of each of the R networks (one entry without replicas)."""
    if case.replicas == 1:
        return [(inputs.h0, inputs.u, inputs.v)]
    return list(zip(inputs.h0.unbind(0), inputs.u.unbind(0), inputs.v.unbind(0), strict=True))


def stack_replicas(case: Case, values: list[torch.Tensor]) -> torch.Tensor:
    """One network's tensor as it is, or R networks' stacked on a leading replica axis."""
    return values[0] if case.replicas == 1 else torch.stack(values)


@dataclass
class Runner:
    """One provider ready to run one case.

    Args:
        forward: computes the output (canonical shape: that of ``Inputs.h0``).
        params: the leaf tensors trained by the step.
        gradients: after a training step, the canonical gradients
            ``{"u": ..., "v": ...}`` (shapes of ``Inputs.u``/``Inputs.v``).
        mode: ``"forward"`` or ``"train"``.
        probe: the loss weights.
        before_step: called at the start of every step (CUDA-graph step marks). Default None.
    """

    forward: Callable[[], torch.Tensor]
    params: list[torch.Tensor]
    gradients: Callable[[], dict[str, torch.Tensor]]
    mode: str
    probe: torch.Tensor
    before_step: Callable[[], None] | None = None

    def clear(self) -> None:
        """Drop the gradients of the last step."""
        for p in self.params:
            p.grad = None

    def step(self) -> torch.Tensor:
        """One forward pass (no graph) or one training step; returns the output (detached)."""
        self.clear()
        if self.before_step is not None:
            self.before_step()
        if self.mode == "forward":
            with torch.no_grad():
                return self.forward()
        out = self.forward()
        (out * self.probe).sum().backward()
        return out.detach()

    def outputs(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output of the last step and, in training, its gradients (on the CPU)."""
        # Copies: on the CPU .cpu() is the same tensor, and an engine may reuse its buffers.
        result = {"out": out.detach().cpu().clone()}
        if self.mode == "train":
            result.update({name: g.detach().cpu().clone() for name, g in self.gradients().items()})
        return result


def _always_available(case: Case) -> str | None:
    return None


@dataclass(frozen=True)
class Provider:
    """A named way to run a workload.

    Attributes:
        name: the provider's name in tables and files.
        workload: ``"stack"`` or ``"meanode"``.
        description: one line for ``--help`` and the README.
        build: ``(case, inputs) -> Runner``.
        reason: ``case -> str | None``, why the provider cannot run the case (None: it can).
            Default: it can run every case of its workload.
        env: environment variables its worker process needs (documented per provider).
            Default none.
        compiles: whether its first step compiles (``torch.compile``): the report then
            gives the compile time apart from the time per step. Default False.
    """

    name: str
    workload: str
    description: str
    build: Callable[[Case, Inputs], Runner]
    reason: Callable[[Case], str | None] = _always_available
    env: dict[str, str] = field(default_factory=dict)
    compiles: bool = False

    def unavailable_reason(self, case: Case) -> str | None:
        """Why this provider cannot run ``case`` here, or None."""
        if case.workload != self.workload:
            return f"provider {self.name} runs the {self.workload} workload, not {case.workload}"
        return self.reason(case)


def adopt_weights(owner: str, u: torch.Tensor, v: torch.Tensor, inputs: Inputs,
                  scales: dict[str, tuple[float, float]]) -> None:
    """Copy the case's u, v into a deepres module's parameters, after checking that the
    module computes the benchmark's function.

    Args:
        owner: the module's name, for the error message.
        u, v: the module's parameters (their shapes must be those of ``inputs.u``).
        inputs: the case's inputs.
        scales: name → (the module's value, the benchmark's value), equal to 1e-12.

    Raises:
        ValueError: a shape or a scale differs.
    """
    if tuple(u.shape) != tuple(inputs.u.shape):
        raise ValueError(f"{owner} holds u of shape {tuple(u.shape)}; the benchmark expects "
                         f"{tuple(inputs.u.shape)}")
    for name, (got, expected) in scales.items():
        if not math.isclose(got, expected, rel_tol=1e-12):
            raise ValueError(f"{owner}'s {name} is {got}; the benchmark's inputs use {expected}")
    with torch.no_grad():
        u.copy_(inputs.u)
        v.copy_(inputs.v)
