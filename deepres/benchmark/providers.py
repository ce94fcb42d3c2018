"""Benchmark providers: every way of running the same model on the same inputs.

A :class:`Case` fixes a workload, its sizes, dtype and device; :func:`make_inputs`
draws its inputs from one seed (so every provider, in whatever process, gets
bit-identical u, v, h0 and loss probe); a :class:`Provider` turns them into a
:class:`Runner` whose ``step()`` runs one forward pass (``mode="forward"``,
under ``torch.no_grad()``: inference) or one training step (``mode="train"``:
forward, loss = Σ probe ⊙ output, backward to every weight).

Workload ``stack`` (eq. (1) of docs/design.md §1, ``mlu`` parameterization: u, v ~ N(0, D),
a = 1/D, c = α/(L·M)), providers:

- ``reference``: :func:`deepres.engines.reference.reference_residual_stack`, plain autograd.
- ``deepres-torch`` / ``deepres-torch-sqrt`` / ``deepres-torch-k<k>``: the PyTorch
  engine with ``checkpoint_every`` None, ``"sqrt"``, k.
- ``deepres-triton`` / ``deepres-triton-sqrt``: the fused Triton engine (CUDA only).
- ``eager``: what a user would write: an ``nn.ModuleList`` of blocks, each with its
  own two bias-free linear maps (``nn.Linear`` weights (M, D) and (D, M)), plain
  autograd. It is the baseline of the ratios.
- ``eager-checkpoint``: the same module, ⌈√L⌉-block segments under
  ``torch.utils.checkpoint`` (non-reentrant).
- ``compile`` / ``compile-reduce-overhead``: one block written as a function,
  ``torch.compile``-d once and applied layer by layer (reduce-overhead: CUDA only).
- ``deepres-torch-loop``: with R > 1 replicas, the PyTorch engine called once per
  network (R separate weight tensors), against the single replica launch of
  ``deepres-torch``.

With R > 1 the deepres engines and ``reference`` run all R networks in one call
(replica form); ``eager``, ``eager-checkpoint`` and ``compile`` loop over R
independent models in Python, which is what one would do without deepres.

Workload ``meanode`` (docs/design.md §2): ``depth`` is the number of rk4 steps N, ``hidden``
the number of particles K, ``batch`` the number of samples; u, v (2N+1, K, D)
live on the rk4 node grid (node j at time j/(2N)); field F(h, s) = c·σ(a·h u(s)ᵀ) v(s)
with c = α/K, a = 1/D. Providers:

- ``deepres-meanode-adjoint`` / ``deepres-meanode-adjoint-backsolve`` /
  ``deepres-meanode-discrete``: ``deepres.MeanODE`` (h kept at every step, or
  re-integrated backward; exact gradient of the discrete solve).
- ``autograd-rk4``: plain autograd through the classic rk4 loop (the baseline).
- ``torchdiffeq-odeint`` / ``torchdiffeq-odeint-adjoint``: torchdiffeq with
  ``method="rk4"`` on the same fixed grid, the field as an ``nn.Module`` whose
  parameters are indexed by time (the node nearest to t). Note: torchdiffeq's
  ``"rk4"`` is the 3/8-rule variant (stages at t + Δt/3, t + 2Δt/3, both mapped to
  the midpoint node), so its outputs agree with the classic rk4 only to the
  solver's order; the cost per step (four field evaluations) is the same.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from deepres._checks import resolve_checkpoint_every
from deepres.activations import ACTIVATIONS
from deepres.engines.reference import reference_residual_stack
from deepres.engines.triton_support import unavailable_reason as triton_unavailable_reason
from deepres.functional import residual_stack

__all__ = [
    "DTYPES",
    "MODES",
    "WORKLOADS",
    "Case",
    "Inputs",
    "Provider",
    "Runner",
    "baseline_provider",
    "make_inputs",
    "meanode_providers",
    "providers_for",
    "stack_providers",
]

WORKLOADS: tuple[str, ...] = ("stack", "meanode")
MODES: tuple[str, ...] = ("forward", "train")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Case:
    """One point of the benchmark grid.

    Args:
        workload: ``"stack"`` or ``"meanode"``. Default ``"stack"``.
        mode: ``"forward"`` (inference, no graph) or ``"train"`` (forward + backward).
            Default ``"train"``.
        depth: L (stack) or rk4 steps N (meanode). Default 64.
        batch: B, samples per network. Default 32.
        dim: D, width of the residual stream. Default 16.
        hidden: M units per block (stack) or K particles (meanode). Default 32.
        replicas: R independent networks (stack only; 1 = no replica axis). Default 1.
        activation: σ, one of :data:`deepres.ACTIVATIONS`. Default ``"tanh"``.
        dtype: ``"float32"`` or ``"float64"``. Default ``"float32"``.
        device: ``"cpu"`` or ``"cuda"``. Default ``"cpu"``.
        alpha: α of the ``mlu`` parameterization. Default 1.0.
        seed: seed of the inputs. Default 0.
    """

    workload: str = "stack"
    mode: str = "train"
    depth: int = 64
    batch: int = 32
    dim: int = 16
    hidden: int = 32
    replicas: int = 1
    activation: str = "tanh"
    dtype: str = "float32"
    device: str = "cpu"
    alpha: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {WORKLOADS}; got {self.workload!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {self.mode!r}")
        for name in ("depth", "batch", "dim", "hidden", "replicas"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.workload == "meanode" and self.replicas != 1:
            raise ValueError(f"replicas must be 1 for the meanode workload; got {self.replicas}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; got {self.activation!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}; got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda'; got {self.device!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be finite and > 0; got {self.alpha!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nodes(self) -> int:
        """Parameter nodes of the meanode rk4 grid: 2N + 1."""
        return 2 * self.depth + 1

    @property
    def layer_updates(self) -> int:
        """Sample-layer updates per step: R·B·L (stack), 4·B·N field evaluations per sample (meanode)."""
        if self.workload == "meanode":
            return 4 * self.batch * self.depth
        return self.replicas * self.batch * self.depth

    @property
    def samples(self) -> int:
        """Samples processed per step, all replicas together: R·B."""
        return self.replicas * self.batch

    def model_flops(self) -> float:
        """Multiply-add FLOPs of one step by the model of docs/design.md §6.

        Per layer and sample: 4·M·D forward (two products of M·D multiply-adds),
        8·M·D more for backward (∂u, ∂v, ∂h; recomputation not counted).
        The meanode workload counts 4 field evaluations per step.
        """
        per_eval = 4.0 * self.hidden * self.dim * (3 if self.mode == "train" else 1)
        return per_eval * self.layer_updates

    def model_bytes(self) -> float:
        """Minimal memory traffic of one step: the weights read once per pass (and the
        weight gradients written once in training), the stream h read and written."""
        item = torch.empty((), dtype=self.torch_dtype).element_size()
        weights = 2.0 * self.hidden * self.dim * self.replicas * (
            self.nodes if self.workload == "meanode" else self.depth)
        passes = 3.0 if self.mode == "train" else 1.0  # forward read, backward read, gradient write
        stream = 2.0 * self.samples * self.dim * (2.0 if self.mode == "train" else 1.0)
        return item * (weights * passes + stream)

    def key(self) -> str:
        """A short unique name of the case (for files and tables)."""
        return (f"{self.workload}-{self.mode}-L{self.depth}-B{self.batch}-D{self.dim}-M{self.hidden}"
                f"-R{self.replicas}-{self.activation}-{self.dtype}-{self.device}-a{self.alpha:g}-s{self.seed}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Inputs:
    """The tensors of one case, identical for every provider.

    Attributes:
        h0: (B, D), or (R, B, D) with R > 1.
        u, v: stack: (L, M, D) or (R, L, M, D); meanode: (2N+1, K, D).
        probe: the loss weights, shaped like the output; loss = Σ probe ⊙ output.
        multiplier: c. pre_scale: a.
    """

    h0: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    probe: torch.Tensor
    multiplier: float
    pre_scale: float


def make_inputs(case: Case) -> Inputs:
    """Draw the inputs of ``case`` from ``case.seed`` (on the CPU, then moved), ``mlu`` scaling.

    Args:
        case: the :class:`Case`.

    Returns:
        :class:`Inputs` on ``case.device`` in ``case.dtype``. Every meanode node gets
        its own draw (not the tied initialization), so the forward is not the identity.

    Example:
        >>> inputs = make_inputs(Case(depth=8, batch=4, dim=2, hidden=3))
        >>> tuple(inputs.u.shape), tuple(inputs.h0.shape)
        ((8, 3, 2), (4, 2))
    """
    generator = torch.Generator().manual_seed(case.seed)
    dtype, device = case.torch_dtype, torch.device(case.device)
    std = math.sqrt(case.dim)
    if case.workload == "stack":
        weight_shape: tuple[int, ...] = (case.depth, case.hidden, case.dim)
        stream_shape: tuple[int, ...] = (case.batch, case.dim)
        if case.replicas > 1:
            weight_shape = (case.replicas, *weight_shape)
            stream_shape = (case.replicas, *stream_shape)
        multiplier = case.alpha / (case.depth * case.hidden)
    else:
        weight_shape = (case.nodes, case.hidden, case.dim)
        stream_shape = (case.batch, case.dim)
        multiplier = case.alpha / case.hidden

    def draw(shape: tuple[int, ...], scale: float) -> torch.Tensor:
        sample = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
        return sample.to(device=device, dtype=dtype)

    u = draw(weight_shape, std)
    v = draw(weight_shape, std)
    h0 = draw(stream_shape, 1.0)
    probe = draw(stream_shape, 1.0)
    return Inputs(h0=h0, u=u, v=v, probe=probe, multiplier=multiplier, pre_scale=1.0 / case.dim)


# What a user writes: PyTorch's own functions (deepres.activations may trade autograd
# memory for speed, e.g. tanh through sigmoid on the CPU, which is not what a baseline does).
_USER_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": lambda z: F.gelu(z, approximate="none"),
    "silu": F.silu,
    "identity": lambda z: z,
}


def user_activation(name: str, z: torch.Tensor) -> torch.Tensor:
    """σ(z) with PyTorch's own function, as the baselines (eager, compile, autograd loops) use it."""
    return _USER_ACTIVATIONS[name](z)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)


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


@dataclass(frozen=True)
class Provider:
    """A named way to run a workload.

    Attributes:
        name: the provider's name in tables and files.
        workload: ``"stack"`` or ``"meanode"``.
        description: one line for ``--help`` and the README.
        build: ``(case, inputs) -> Runner``.
        reason: ``case -> str | None``, why the provider cannot run the case (None: it can).
        env: environment variables its worker process needs (documented per provider).
    """

    name: str
    workload: str
    description: str
    build: Callable[[Case, Inputs], Runner]
    reason: Callable[[Case], str | None] = lambda case: None
    env: dict[str, str] = field(default_factory=dict)

    def unavailable_reason(self, case: Case) -> str | None:
        """Why this provider cannot run ``case`` here, or None."""
        if case.workload != self.workload:
            return f"provider {self.name} runs the {self.workload} workload, not {case.workload}"
        return self.reason(case)


# ----------------------------------------------------------------------------------- stack


def _engine_runner(case: Case, inputs: Inputs, backend: str, policy: int | str | None) -> Runner:
    u, v = _leaf(inputs.u), _leaf(inputs.v)
    h0 = inputs.h0

    def forward() -> torch.Tensor:
        return residual_stack(h0, u, v, multiplier=inputs.multiplier, pre_scale=inputs.pre_scale,
                              activation=case.activation, backend=backend, checkpoint_every=policy)

    return Runner(forward, [u, v], lambda: {"u": u.grad, "v": v.grad}, case.mode, inputs.probe)


def _reference_runner(case: Case, inputs: Inputs) -> Runner:
    u, v = _leaf(inputs.u), _leaf(inputs.v)

    def forward() -> torch.Tensor:
        return reference_residual_stack(inputs.h0, u, v, inputs.multiplier, inputs.pre_scale,
                                        case.activation)

    return Runner(forward, [u, v], lambda: {"u": u.grad, "v": v.grad}, case.mode, inputs.probe)


def _engine_loop_runner(case: Case, inputs: Inputs) -> Runner:
    # R networks with their own weight tensors, one engine call each: what running
    # replicas without the replica axis costs.
    us = [_leaf(t) for t in inputs.u.unbind(0)]
    vs = [_leaf(t) for t in inputs.v.unbind(0)]
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


def _per_network(case: Case, inputs: Inputs) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    if case.replicas == 1:
        return [(inputs.h0, inputs.u, inputs.v)]
    return list(zip(inputs.h0.unbind(0), inputs.u.unbind(0), inputs.v.unbind(0), strict=True))


def _eager_runner(case: Case, inputs: Inputs, checkpoint: bool) -> Runner:
    segment = resolve_checkpoint_every(case.depth, "sqrt") if checkpoint else None
    nets = [(h, EagerStack(u, v, inputs.multiplier, inputs.pre_scale, case.activation, segment))
            for h, u, v in _per_network(case, inputs)]

    def forward() -> torch.Tensor:
        outs = [net(h) for h, net in nets]
        return outs[0] if case.replicas == 1 else torch.stack(outs)

    def gradients() -> dict[str, torch.Tensor]:
        grads = [net.gradients() for _, net in nets]
        if case.replicas == 1:
            return {"u": grads[0][0], "v": grads[0][1]}
        return {"u": torch.stack([g[0] for g in grads]), "v": torch.stack([g[1] for g in grads])}

    params = [p for _, net in nets for p in net.parameters()]
    return Runner(forward, params, gradients, case.mode, inputs.probe)


def _compile_runner(case: Case, inputs: Inputs, mode: str | None) -> Runner:
    c, a, act = inputs.multiplier, inputs.pre_scale, case.activation

    def block(h: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        return h + c * F.linear(user_activation(act, a * F.linear(h, w_in)), w_out)

    compiled = torch.compile(block, mode=mode, dynamic=False)
    nets = []
    for h, u, v in _per_network(case, inputs):
        w_in = [_leaf(t) for t in u.unbind(0)]
        w_out = [_leaf(t.t()) for t in v.unbind(0)]
        nets.append((h, w_in, w_out))

    def forward() -> torch.Tensor:
        outs = []
        for h, w_in, w_out in nets:
            for wi, wo in zip(w_in, w_out, strict=True):
                h = compiled(h, wi, wo)
            outs.append(h)
        return outs[0] if case.replicas == 1 else torch.stack(outs)

    def gradients() -> dict[str, torch.Tensor]:
        grads = [(torch.stack([w.grad for w in w_in]), torch.stack([w.grad.t() for w in w_out]))
                 for _, w_in, w_out in nets]
        if case.replicas == 1:
            return {"u": grads[0][0], "v": grads[0][1]}
        return {"u": torch.stack([g[0] for g in grads]), "v": torch.stack([g[1] for g in grads])}

    params = [w for _, w_in, w_out in nets for w in (*w_in, *w_out)]
    before = torch.compiler.cudagraph_mark_step_begin if mode == "reduce-overhead" else None
    return Runner(forward, params, gradients, case.mode, inputs.probe, before_step=before)


def _triton_reason(case: Case) -> str | None:
    if case.device != "cuda":
        return ("no CUDA device: the Triton kernels would run in TRITON_INTERPRET's CPU interpreter, "
                "orders of magnitude too slow to benchmark")
    if importlib.util.find_spec("deepres.engines.triton_engine") is None:
        return "the Triton engine (deepres.engines.triton_engine) is not part of this installation"
    return triton_unavailable_reason(torch.device(case.device))


def _replicas_only(case: Case) -> str | None:
    return None if case.replicas > 1 else "compares against the replica launch: needs --replicas > 1"


def _cuda_only(case: Case) -> str | None:
    return None if case.device == "cuda" else "mode='reduce-overhead' records CUDA graphs: CUDA only"


# NOTE: inductor's C++ kernels link the system libgomp while PyTorch ships its own;
# the two OpenMP pools busy-wait against each other on a small CPU. Measured on the
# 2-core benchmark machine: 72 ms per compiled block call with the default wait
# policy, 0.15 ms with OMP_WAIT_POLICY=PASSIVE (eager: 0.4 ms).
_COMPILE_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def _policy_name(policy: int | str | None) -> str:
    if policy is None:
        return ""
    return "-sqrt" if policy == "sqrt" else f"-k{policy}"


def stack_providers(checkpoint_policies: Sequence[int | str | None] = (None, "sqrt")) -> list[Provider]:
    """The providers of the ``stack`` workload, the baseline ``eager`` first.

    Args:
        checkpoint_policies: the ``checkpoint_every`` values to run the deepres
            engines with. Default ``(None, "sqrt")``.

    Returns:
        A list of :class:`Provider`.
    """
    providers = [
        Provider("eager", "stack", "nn.ModuleList of blocks with their own nn.Linear weights, plain autograd",
                 lambda case, inputs: _eager_runner(case, inputs, checkpoint=False)),
        Provider("reference", "stack", "deepres.engines.reference: plain per-layer autograd on stacked u, v",
                 _reference_runner),
    ]
    for policy in checkpoint_policies:
        suffix = _policy_name(policy)
        providers.append(Provider(
            f"deepres-torch{suffix}", "stack", f"deepres PyTorch engine, checkpoint_every={policy!r}",
            lambda case, inputs, policy=policy: _engine_runner(case, inputs, "torch", policy)))
    for policy in checkpoint_policies:
        suffix = _policy_name(policy)
        providers.append(Provider(
            f"deepres-triton{suffix}", "stack", f"deepres Triton engine, checkpoint_every={policy!r}",
            lambda case, inputs, policy=policy: _engine_runner(case, inputs, "triton", policy),
            reason=_triton_reason))
    providers += [
        Provider("eager-checkpoint", "stack",
                 "the eager module under torch.utils.checkpoint, ⌈√L⌉ blocks per segment",
                 lambda case, inputs: _eager_runner(case, inputs, checkpoint=True)),
        Provider("compile", "stack", "torch.compile of one block, applied layer by layer",
                 lambda case, inputs: _compile_runner(case, inputs, None), env=_COMPILE_ENV),
        Provider("compile-reduce-overhead", "stack", "the same with mode='reduce-overhead' (CUDA graphs)",
                 lambda case, inputs: _compile_runner(case, inputs, "reduce-overhead"),
                 reason=_cuda_only, env=_COMPILE_ENV),
        Provider("deepres-torch-loop", "stack", "deepres PyTorch engine called once per replica (R calls)",
                 _engine_loop_runner, reason=_replicas_only),
    ]
    return providers


# --------------------------------------------------------------------------------- meanode


def _rk4_autograd(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, c: float, a: float, act: str,
                  steps: int) -> torch.Tensor:
    """Classic rk4 on the node grid (node 2n at s_n, 2n+1 at the midpoint), plain autograd."""

    # unbind: one autograd node for all nodes, whose backward stacks the per-node gradients
    # once; indexing u[j] per evaluation would build a full-size gradient for every evaluation.
    us, vs = u.unbind(0), v.unbind(0)

    def field(x: torch.Tensor, node: int) -> torch.Tensor:
        return c * (user_activation(act, a * (x @ us[node].T)) @ vs[node])

    dt = 1.0 / steps
    for n in range(steps):
        k1 = field(h, 2 * n)
        k2 = field(h + 0.5 * dt * k1, 2 * n + 1)
        k3 = field(h + 0.5 * dt * k2, 2 * n + 1)
        k4 = field(h + dt * k3, 2 * n + 2)
        h = h + (dt / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)
    return h


def _autograd_runner(case: Case, inputs: Inputs) -> Runner:
    u, v = _leaf(inputs.u), _leaf(inputs.v)

    def forward() -> torch.Tensor:
        return _rk4_autograd(inputs.h0, u, v, inputs.multiplier, inputs.pre_scale, case.activation,
                             case.depth)

    return Runner(forward, [u, v], lambda: {"u": u.grad, "v": v.grad}, case.mode, inputs.probe)


class TimeIndexedField(nn.Module):
    """The mean-ODE field F(t, h) = c·σ(a·h u(t)ᵀ) v(t) with parameters on a node grid.

    torchdiffeq needs the field as a module of (t, h); the parameters are one
    (K, D) pair per node, held in ``nn.ParameterList``s (separate leaves, as a user
    would write them: indexing one stacked parameter would make every evaluation's
    backward build a full-size gradient), used at the node nearest to t (node j at
    time j/(nodes − 1)).

    Args:
        u, v: (nodes, K, D). multiplier: c. pre_scale: a. activation: σ's name.
    """

    def __init__(self, u: torch.Tensor, v: torch.Tensor, multiplier: float, pre_scale: float,
                 activation: str) -> None:
        super().__init__()
        self.u = nn.ParameterList(nn.Parameter(t.detach().clone()) for t in u.unbind(0))
        self.v = nn.ParameterList(nn.Parameter(t.detach().clone()) for t in v.unbind(0))
        self.multiplier, self.pre_scale, self.activation = multiplier, pre_scale, activation
        self.intervals = u.shape[0] - 1

    def gradients(self) -> dict[str, torch.Tensor]:
        """∂u, ∂v stacked to (nodes, K, D) (zeros at nodes the solver never used)."""
        return {name: torch.stack([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
                for name, params in (("u", self.u), ("v", self.v))}

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        node = min(max(round(float(t.detach()) * self.intervals), 0), self.intervals)
        z = self.pre_scale * (h @ self.u[node].T)
        return self.multiplier * (user_activation(self.activation, z) @ self.v[node])


def _torchdiffeq_reason(case: Case) -> str | None:
    if importlib.util.find_spec("torchdiffeq") is None:
        return "torchdiffeq is not installed (pip install torchdiffeq)"
    return None


def _torchdiffeq_runner(case: Case, inputs: Inputs, adjoint: bool) -> Runner:
    import torchdiffeq

    fn = TimeIndexedField(inputs.u, inputs.v, inputs.multiplier, inputs.pre_scale, case.activation)
    steps = case.depth
    times = torch.tensor([0.0, 1.0], dtype=case.torch_dtype, device=inputs.h0.device)

    def grid(func: object, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # The same fixed grid of N steps, in either direction (the adjoint runs 1 → 0).
        return torch.linspace(float(t[0]), float(t[-1]), steps + 1, dtype=t.dtype, device=t.device)

    options = {"grid_constructor": grid}
    solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint

    def forward() -> torch.Tensor:
        return solve(fn, inputs.h0, times, method="rk4", options=options)[-1]

    return Runner(forward, list(fn.parameters()), fn.gradients, case.mode, inputs.probe)


def _meanode_reason(case: Case) -> str | None:
    try:
        from deepres.meanode import MeanODE  # noqa: F401
    except ImportError as error:
        return f"deepres.MeanODE is not available in this build ({error})"
    return None


def _meanode_runner(case: Case, inputs: Inputs, gradient: str, policy: int | str | None = None) -> Runner:
    from deepres.meanode import MeanODE

    ode = MeanODE(case.dim, case.hidden, case.depth, alpha=case.alpha, activation=case.activation,
                  solver="rk4", gradient=gradient, checkpoint_every=policy, device=case.device,
                  dtype=case.torch_dtype)
    if tuple(ode.u.shape) != tuple(inputs.u.shape):
        raise ValueError(f"MeanODE holds u of shape {tuple(ode.u.shape)}; the benchmark expects "
                         f"{tuple(inputs.u.shape)} (2N+1 rk4 nodes)")
    # MeanODE's field is m·(1/K)·Σ_k: its multiplier m over K is the benchmark's c.
    for name, got, expected in (("multiplier / K", ode.field_multiplier / case.hidden, inputs.multiplier),
                                ("pre_scale", ode.pre_scale, inputs.pre_scale)):
        if not math.isclose(got, expected, rel_tol=1e-12):
            raise ValueError(f"MeanODE's {name} is {got}; the benchmark's field uses {expected}")
    with torch.no_grad():
        ode.u.copy_(inputs.u)
        ode.v.copy_(inputs.v)

    def forward() -> torch.Tensor:
        return ode(inputs.h0)

    return Runner(forward, [ode.u, ode.v], lambda: {"u": ode.u.grad, "v": ode.v.grad}, case.mode,
                  inputs.probe)


def meanode_providers() -> list[Provider]:
    """The providers of the ``meanode`` workload, the baseline ``autograd-rk4`` first."""
    return [
        Provider("autograd-rk4", "meanode", "plain autograd through the classic rk4 loop", _autograd_runner),
        Provider("deepres-meanode-adjoint", "meanode", "deepres.MeanODE, gradient='adjoint'",
                 lambda case, inputs: _meanode_runner(case, inputs, "adjoint"), reason=_meanode_reason),
        Provider("deepres-meanode-adjoint-backsolve", "meanode",
                 "deepres.MeanODE, gradient='adjoint', checkpoint_every='backsolve' (O(B·D) memory)",
                 lambda case, inputs: _meanode_runner(case, inputs, "adjoint", "backsolve"),
                 reason=_meanode_reason),
        Provider("deepres-meanode-discrete", "meanode", "deepres.MeanODE, gradient='discrete'",
                 lambda case, inputs: _meanode_runner(case, inputs, "discrete"), reason=_meanode_reason),
        Provider("torchdiffeq-odeint", "meanode", "torchdiffeq.odeint, method='rk4' (3/8 rule), same grid",
                 lambda case, inputs: _torchdiffeq_runner(case, inputs, adjoint=False),
                 reason=_torchdiffeq_reason),
        Provider("torchdiffeq-odeint-adjoint", "meanode",
                 "torchdiffeq.odeint_adjoint, method='rk4', same grid",
                 lambda case, inputs: _torchdiffeq_runner(case, inputs, adjoint=True),
                 reason=_torchdiffeq_reason),
    ]


def providers_for(workload: str, checkpoint_policies: Sequence[int | str | None] = (None, "sqrt"),
                  ) -> list[Provider]:
    """All providers of ``workload`` (``"stack"`` or ``"meanode"``), baseline first."""
    if workload == "stack":
        return stack_providers(checkpoint_policies)
    if workload == "meanode":
        return meanode_providers()
    raise ValueError(f"workload must be one of {WORKLOADS}; got {workload!r}")


def baseline_provider(workload: str) -> str:
    """The provider the ratios are taken against: ``eager`` (stack), ``autograd-rk4`` (meanode)."""
    return "eager" if workload == "stack" else "autograd-rk4"
