"""The ``torch.compile`` providers of the ``stack`` workload.

- ``compile``: one residual block written as a function with PyTorch's own
  operations, ``torch.compile``-d once and applied layer by layer, its weights
  one ``nn.Parameter`` pair per layer.
- ``compile-reduce-overhead``: the same with ``mode="reduce-overhead"`` (CUDA
  graphs; CUDA only). The weights are ``nn.Parameter``s, which CUDA-graph trees
  treat as static inputs: a replay reads them where they are instead of copying
  every layer's weights into the graph's input buffers first.
- ``deepres-compiled``: the deepres module (:class:`deepres.ResidualStack`,
  default engine choice, no checkpointing) under ``torch.compile(module)``, as a
  user compiles a model.

All three compile at their first step. The report gives that step's time
(``first_step_s``) and its excess over the median step (``compile_s``) apart
from the time per step. ``compile_backend`` picks the ``torch.compile`` backend
(``"inductor"`` by default; ``"eager"`` and ``"aot_eager"`` trace without
generating code, which makes a quick test of the tracing itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepres.benchmark.case import PARAMETERIZATION, Case, Inputs
from deepres.benchmark.runner import (
    Provider,
    Runner,
    adopt_weights,
    per_network,
    stack_replicas,
    user_activation,
)
from deepres.modules import ResidualStack

__all__ = ["COMPILE_ENV", "compile_providers"]

# NOTE: inductor's C++ kernels link the system libgomp while PyTorch ships its own;
# the two OpenMP pools busy-wait against each other on a small CPU. Measured on the
# 2-core benchmark machine: 72 ms per compiled block call with the default wait
# policy, 0.15 ms with OMP_WAIT_POLICY=PASSIVE (eager: 0.4 ms).
COMPILE_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def _block_compiled_runner(case: Case, inputs: Inputs, mode: str | None, backend: str) -> Runner:
    c, a, act = inputs.multiplier, inputs.pre_scale, case.activation

    def block(h: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        return h + c * F.linear(user_activation(act, a * F.linear(h, w_in)), w_out)

    if mode is None:
        compiled = torch.compile(block, backend=backend, dynamic=False)
    else:  # a mode implies the inductor backend
        compiled = torch.compile(block, mode=mode, dynamic=False)
    nets = []
    for h, u, v in per_network(case, inputs):
        w_in = [nn.Parameter(t.detach().clone()) for t in u.unbind(0)]
        w_out = [nn.Parameter(t.detach().t().contiguous()) for t in v.unbind(0)]
        nets.append((h, w_in, w_out))

    def forward() -> torch.Tensor:
        outs = []
        for h, w_in, w_out in nets:
            for wi, wo in zip(w_in, w_out, strict=True):
                h = compiled(h, wi, wo)
            outs.append(h)
        return stack_replicas(case, outs)

    def gradients() -> dict[str, torch.Tensor]:
        return {"u": stack_replicas(case, [torch.stack([w.grad for w in w_in]) for _, w_in, _ in nets]),
                "v": stack_replicas(case, [torch.stack([w.grad.t() for w in w_out]) for _, _, w_out in nets])}

    params = [w for _, w_in, w_out in nets for w in (*w_in, *w_out)]
    before = torch.compiler.cudagraph_mark_step_begin if mode == "reduce-overhead" else None
    return Runner(forward, params, gradients, case.mode, inputs.probe, before_step=before)


def _module_compiled_runner(case: Case, inputs: Inputs, backend: str) -> Runner:
    module = ResidualStack(case.depth, case.dim, case.hidden, alpha=case.alpha,
                           parameterization=PARAMETERIZATION, activation=case.activation,
                           replicas=None if case.replicas == 1 else case.replicas, device=case.device,
                           dtype=case.torch_dtype)
    adopt_weights("ResidualStack", module.u, module.v, inputs,
                  {"multiplier": (module.multiplier, inputs.multiplier),
                   "pre_scale": (module.pre_scale, inputs.pre_scale)})
    compiled = torch.compile(module, backend=backend)

    def forward() -> torch.Tensor:
        return compiled(inputs.h0)

    return Runner(forward, [module.u, module.v], lambda: {"u": module.u.grad, "v": module.v.grad},
                  case.mode, inputs.probe)


def compile_providers(backend: str = "inductor") -> tuple[Provider, Provider, Provider]:
    """``compile``, ``compile-reduce-overhead`` and ``deepres-compiled``.

    Args:
        backend: the ``torch.compile`` backend of ``compile`` and ``deepres-compiled``
            (``compile-reduce-overhead`` needs ``"inductor"``). Default ``"inductor"``.

    Returns:
        The three :class:`Provider`\\ s.
    """

    def graphs_reason(case: Case) -> str | None:
        if case.device != "cuda":
            return "mode='reduce-overhead' records CUDA graphs: CUDA only"
        if backend != "inductor":
            return f"mode='reduce-overhead' needs the inductor backend; the compile backend is {backend!r}"
        return None

    suffix = "" if backend == "inductor" else f" (backend={backend!r})"
    return (
        Provider("compile", "stack", f"torch.compile of one block, applied layer by layer{suffix}",
                 lambda case, inputs: _block_compiled_runner(case, inputs, None, backend),
                 env=COMPILE_ENV, compiles=True),
        Provider("compile-reduce-overhead", "stack", "the same with mode='reduce-overhead' (CUDA graphs)",
                 lambda case, inputs: _block_compiled_runner(case, inputs, "reduce-overhead", backend),
                 reason=graphs_reason, env=COMPILE_ENV, compiles=True),
        # Not COMPILE_ENV: the compiled module's graph is the stack's custom op, whose eager
        # matmuls inside slow down with passive OpenMP threads (measured on the 2-core CPU,
        # ResidualStack(64, 16, 64), B = 64: 24.4 ms per step plain, 41.4 ms with
        # OMP_WAIT_POLICY=PASSIVE; compiled 26.5 and 41.6 ms), so it runs as users run it.
        Provider("deepres-compiled", "stack", f"torch.compile(deepres.ResidualStack){suffix}",
                 lambda case, inputs: _module_compiled_runner(case, inputs, backend), compiles=True),
    )
