"""Providers of the ``stack`` workload: every way of running the same residual stack.

- ``eager`` (the baseline of the ratios): what a user would write: an
  ``nn.ModuleList`` of blocks, each with its own two bias-free linear maps
  (``nn.Linear`` weights (M, D) and (D, M)), PyTorch's own activations, plain autograd.
- ``reference``: :func:`deepres.engines.reference.reference_residual_stack`, plain autograd.
- ``deepres-torch`` / ``deepres-torch-sqrt`` / ``deepres-torch-k<k>``: the PyTorch
  engine with ``checkpoint_every`` None, ``"sqrt"``, k.
- ``deepres-triton`` / ``deepres-triton-sqrt``: the fused Triton engine (CUDA only).
- ``eager-checkpoint``: the eager module, ⌈√L⌉-block segments under
  ``torch.utils.checkpoint`` (non-reentrant).
- ``compile`` / ``compile-reduce-overhead`` / ``deepres-compiled``: the
  ``torch.compile`` providers (:mod:`deepres.benchmark.compiled_providers`).
- ``deepres-torch-loop``: with R > 1 replicas, the PyTorch engine called once per
  network (R separate weight tensors), against the single replica launch of
  ``deepres-torch``.

With R > 1 the deepres engines and ``reference`` run all R networks in one call
(replica form); ``eager``, ``eager-checkpoint`` and ``compile`` loop over R
independent models in Python, which is what one would do without deepres.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from deepres._checks import resolve_checkpoint_every
from deepres.benchmark.case import Case, Inputs
from deepres.benchmark.compiled_providers import compile_providers
from deepres.benchmark.runner import Provider, Runner, leaf, per_network, stack_replicas, user_activation
from deepres.engines.reference import reference_residual_stack
from deepres.engines.triton.support import unavailable_reason as triton_unavailable_reason
from deepres.functional import residual_stack

__all__ = ["EagerBlock", "EagerStack", "policy_suffix", "stack_providers"]


def _engine_runner(case: Case, inputs: Inputs, backend: str, policy: int | str | None) -> Runner:
    u, v = leaf(inputs.u), leaf(inputs.v)
    h0 = inputs.h0

    def forward() -> torch.Tensor:
        return residual_stack(h0, u, v, multiplier=inputs.multiplier, pre_scale=inputs.pre_scale,
                              activation=case.activation, backend=backend, checkpoint_every=policy)

    return Runner(forward, [u, v], lambda: {"u": u.grad, "v": v.grad}, case.mode, inputs.probe)


def _reference_runner(case: Case, inputs: Inputs) -> Runner:
    u, v = leaf(inputs.u), leaf(inputs.v)

    def forward() -> torch.Tensor:
        return reference_residual_stack(inputs.h0, u, v, inputs.multiplier, inputs.pre_scale,
                                        case.activation)

    return Runner(forward, [u, v], lambda: {"u": u.grad, "v": v.grad}, case.mode, inputs.probe)


def _engine_loop_runner(case: Case, inputs: Inputs) -> Runner:
    # R networks with their own weight tensors, one engine call each: what running
    # replicas without the replica axis costs.
    us = [leaf(t) for t in inputs.u.unbind(0)]
    vs = [leaf(t) for t in inputs.v.unbind(0)]
    h0s = inputs.h0.unbind(0)

    def forward() -> torch.Tensor:
        return torch.stack([
            residual_stack(h, u, v, multiplier=inputs.multiplier, pre_scale=inputs.pre_scale,
                           activation=case.activation, backend="torch")
            for h, u, v in zip(h0s, us, vs, strict=True)
        ])

    def gradients() -> dict[str, torch.Tensor]:
        return {"u": torch.stack([u.grad for u in us]), "v": torch.stack([v.grad for v in vs])}

    return Runner(forward, us + vs, gradients, case.mode, inputs.probe)


class EagerBlock(nn.Module):
    """One 2LP residual block as a user writes it: ``h + c·W_out σ(a·W_in h)``.

    Args:
        u_l: (M, D), the weight of the first ``nn.Linear(D, M, bias=False)``.
        v_l: (M, D); the second ``nn.Linear(M, D, bias=False)`` holds vᵀ (D, M).
        multiplier: c. pre_scale: a. activation: σ's name.
    """

    def __init__(self, u_l: torch.Tensor, v_l: torch.Tensor, multiplier: float, pre_scale: float,
                 activation: str) -> None:
        super().__init__()
        self.inp_weight = nn.Parameter(u_l.detach().clone())
        self.out_weight = nn.Parameter(v_l.detach().t().contiguous())
        self.multiplier, self.pre_scale, self.activation = multiplier, pre_scale, activation

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.pre_scale * F.linear(h, self.inp_weight)
        return h + self.multiplier * F.linear(user_activation(self.activation, z), self.out_weight)


class EagerStack(nn.Module):
    """An ``nn.ModuleList`` of :class:`EagerBlock` with separate parameters.

    Args:
        u, v: (L, M, D). multiplier: c. pre_scale: a. activation: σ's name.
        checkpoint_segment: None (default: plain autograd) or k: run k-block
            segments under ``torch.utils.checkpoint`` (non-reentrant).
    """

    def __init__(self, u: torch.Tensor, v: torch.Tensor, multiplier: float, pre_scale: float,
                 activation: str, checkpoint_segment: int | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            EagerBlock(u_l, v_l, multiplier, pre_scale, activation)
            for u_l, v_l in zip(u.unbind(0), v.unbind(0), strict=True)
        )
        self.checkpoint_segment = checkpoint_segment

    def _segment(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for block in self.blocks[start:stop]:
            h = block(h)
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k = self.checkpoint_segment
        if k is None or not torch.is_grad_enabled():
            return self._segment(h, 0, len(self.blocks))
        for start in range(0, len(self.blocks), k):
            h = torch.utils.checkpoint.checkpoint(self._segment, h, start, start + k, use_reentrant=False)
        return h

    def gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(∂u (L, M, D), ∂v (L, M, D)) after a backward pass."""
        return (torch.stack([b.inp_weight.grad for b in self.blocks]),
                torch.stack([b.out_weight.grad.t() for b in self.blocks]))


def _eager_runner(case: Case, inputs: Inputs, checkpoint: bool) -> Runner:
    segment = resolve_checkpoint_every(case.depth, "sqrt") if checkpoint else None
    nets = [(h, EagerStack(u, v, inputs.multiplier, inputs.pre_scale, case.activation, segment))
            for h, u, v in per_network(case, inputs)]

    def forward() -> torch.Tensor:
        return stack_replicas(case, [net(h) for h, net in nets])

    def gradients() -> dict[str, torch.Tensor]:
        grads = [net.gradients() for _, net in nets]
        return {"u": stack_replicas(case, [g[0] for g in grads]),
                "v": stack_replicas(case, [g[1] for g in grads])}

    params = [p for _, net in nets for p in net.parameters()]
    return Runner(forward, params, gradients, case.mode, inputs.probe)


def _triton_reason(case: Case) -> str | None:
    if case.device != "cuda":
        return ("no CUDA device: the Triton kernels would run in TRITON_INTERPRET's CPU interpreter, "
                "orders of magnitude too slow to benchmark")
    return triton_unavailable_reason(torch.device(case.device))


def _replicas_only(case: Case) -> str | None:
    return None if case.replicas > 1 else "compares against the replica launch: needs --replicas > 1"


def policy_suffix(policy: int | str | None) -> str:
    """The provider-name suffix of a checkpoint policy: ``""``, ``"-sqrt"`` or ``"-k<k>"``."""
    if policy is None:
        return ""
    return "-sqrt" if policy == "sqrt" else f"-k{policy}"


def stack_providers(checkpoint_policies: Sequence[int | str | None] = (None, "sqrt"),
                    compile_backend: str = "inductor") -> list[Provider]:
    """The providers of the ``stack`` workload, the baseline ``eager`` first.

    Args:
        checkpoint_policies: the ``checkpoint_every`` values to run the deepres
            engines with. Default ``(None, "sqrt")``.
        compile_backend: the ``torch.compile`` backend of the compile providers.
            Default ``"inductor"``.

    Returns:
        A list of :class:`Provider`.

    Example:
        >>> [p.name for p in stack_providers([None])][:3]
        ['eager', 'reference', 'deepres-torch']
    """
    providers = [
        Provider("eager", "stack", "nn.ModuleList of blocks with their own nn.Linear weights, plain autograd",
                 lambda case, inputs: _eager_runner(case, inputs, checkpoint=False)),
        Provider("reference", "stack", "deepres.engines.reference: plain per-layer autograd on stacked u, v",
                 _reference_runner),
    ]
    for backend, engine in (("torch", "PyTorch"), ("triton", "Triton")):
        only_cuda = {"reason": _triton_reason} if backend == "triton" else {}
        providers += [Provider(f"deepres-{backend}{policy_suffix(policy)}", "stack",
                               f"deepres {engine} engine, checkpoint_every={policy!r}",
                               partial(_engine_runner, backend=backend, policy=policy), **only_cuda)
                      for policy in checkpoint_policies]
    providers.append(Provider("eager-checkpoint", "stack",
                              "the eager module under torch.utils.checkpoint, ⌈√L⌉ blocks per segment",
                              lambda case, inputs: _eager_runner(case, inputs, checkpoint=True)))
    block_compiled, graphs, module_compiled = compile_providers(compile_backend)
    providers += [
        block_compiled,
        graphs,
        Provider("deepres-torch-loop", "stack", "deepres PyTorch engine called once per replica (R calls)",
                 _engine_loop_runner, reason=_replicas_only),
        module_compiled,
    ]
    return providers
