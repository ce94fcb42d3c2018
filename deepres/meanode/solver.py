"""Fixed-grid explicit Runge–Kutta solves of the mean ODE, forward and (for backsolve) backward in depth.

Shared by both gradient routes: the forward solve (keeping h at checkpoints),
the recomputation of h inside a checkpoint segment, the backward
re-integration of h used by the backsolve option, and the interpolants that
give h at the half-step nodes.
"""

from __future__ import annotations

import torch

from deepres.meanode.field import Field
from deepres.meanode.tableaus import Tableau

__all__ = ["GradientPool", "StateProvider", "backward_step", "forward_solve", "midpoint_state", "rk_step"]


def rk_step(field: Field, tab: Tableau, h: torch.Tensor, step: int, delta: float, work: torch.Tensor,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the tableau from h_i (B, D) to h_{i+1}; also returns k_1 = F(h_i) at node(i, 0)."""
    ks: list[torch.Tensor] = []
    for r in range(tab.stages):
        y = h
        for q, coef in enumerate(tab.a[r]):
            if coef:
                y = torch.add(y, ks[q], alpha=delta * coef)
        ks.append(field.value(y, tab.node(step, r), work))
    out = h
    for r, coef in enumerate(tab.b):
        if coef:
            out = torch.add(out, ks[r], alpha=delta * coef)
    return out, ks[0]


def top_node(tab: Tableau, step: int, steps: int) -> int:
    """The node at time (step+1)·Δ, or the last node when the grid has none at s = 1.

    Euler and midpoint have no node at s = 1; where the backward solve needs the
    parameters there, it uses the last node (a first-order choice that their
    orders do not see: euler is first order, and midpoint uses it only in the
    predictor of its last backward step).
    """
    return min(tab.nodes_per_step * (step + 1), tab.num_nodes(steps) - 1)


def backward_step(field: Field, tab: Tableau, h_hi: torch.Tensor, step: int, steps: int, delta: float,
                  f_hi: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """Re-integrate h from (step+1)·Δ back to step·Δ with the same tableau in reversed time.

    With τ = t_{i+1} − s, dh/dτ = −F(h, t_{i+1} − τ): stage r reads the node at
    t_{i+1} − c_r·Δ and Y_r = h_{i+1} − Δ Σ a_{rq} k_q. ``f_hi`` is k_1 = F(h_{i+1})
    at :func:`top_node`, which the adjoint sweep has already evaluated.
    """
    last = tab.num_nodes(steps) - 1
    ks = [f_hi]
    for r in range(1, tab.stages):
        y = h_hi
        for q, coef in enumerate(tab.a[r]):
            if coef:
                y = torch.add(y, ks[q], alpha=-delta * coef)
        node = min(tab.nodes_per_step * (step + 1) - tab.stage_nodes[r], last)
        ks.append(field.value(y, node, work))
    out = h_hi
    for r, coef in enumerate(tab.b):
        if coef:
            out = torch.add(out, ks[r], alpha=-delta * coef)
    return out


def midpoint_state(tab: Tableau, h_lo: torch.Tensor, h_hi: torch.Tensor, f_lo: torch.Tensor | None,
                   f_hi: torch.Tensor | None, delta: float) -> torch.Tensor:
    """h at the half-step node, interpolated to the solver's order.

    midpoint: (h_lo + h_hi)/2, error O(Δ²). rk4: the cubic Hermite interpolant
    at the middle, (h_lo + h_hi)/2 + Δ/8·(f_lo − f_hi) with f = dh/ds at the
    ends, error Δ⁴/384·h'''' + the solver's O(Δ⁴).
    """
    mid = torch.add(h_lo, h_hi).mul_(0.5)
    if tab.name == "rk4":
        mid.add_(torch.sub(f_lo, f_hi), alpha=delta / 8.0)
    return mid


def forward_solve(field: Field, tab: Tableau, h0: torch.Tensor, steps: int, every: int | None,
                  return_nodes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Integrate from h(0) = h0 (B, D) to h(1).

    Args:
        every: keep h before every ``every``-th step (checkpoints); None keeps nothing.
        return_nodes: also return h at every node, (nodes, B, D).

    Returns:
        (h(1), checkpoints (⌈N/every⌉, B, D) or an empty tensor, h at nodes or None).
    """
    delta = 1.0 / steps
    work = field.buffer()
    count = 0 if every is None else -(-steps // every)
    checkpoints = h0.new_empty((count, *h0.shape))
    path: list[tuple[torch.Tensor, torch.Tensor]] = []
    h = h0
    for step in range(steps):
        if every is not None and step % every == 0:
            checkpoints[step // every].copy_(h)
        h_next, k1 = rk_step(field, tab, h, step, delta, work)
        if return_nodes:
            path.append((h, k1))
        h = h_next
    if h is h0:
        h = h0.clone()
    if not return_nodes:
        return h, checkpoints, None
    values: list[torch.Tensor] = []
    f_end = field.value(h, tab.num_nodes(steps) - 1, work) if tab.name == "rk4" else None
    for step, (h_lo, f_lo) in enumerate(path):
        values.append(h_lo)
        if tab.nodes_per_step == 2:
            h_hi, f_hi = path[step + 1] if step + 1 < steps else (h, f_end)
            values.append(midpoint_state(tab, h_lo, h_hi, f_lo, f_hi, delta))
    if tab.end_node:
        values.append(h)
    return h, checkpoints, torch.stack(values)


class StateProvider:
    """h_i at step i from the checkpoints, asked for in decreasing i.

    With checkpoints every k steps it recomputes the segment [⌊i/k⌋·k, …) from
    its checkpoint when first asked, keeping its k states ((N/k + k)·B·D numbers in all).
    """

    def __init__(self, field: Field, tab: Tableau, steps: int, every: int, checkpoints: torch.Tensor,
                 h_final: torch.Tensor) -> None:
        self.field, self.tab, self.steps, self.every = field, tab, steps, every
        self.checkpoints, self.h_final = checkpoints, h_final
        self.delta = 1.0 / steps
        self.segment = -1
        self.states: list[torch.Tensor] = []
        self.work = field.buffer() if every > 1 else None

    def state(self, step: int) -> torch.Tensor:
        if step == self.steps:
            return self.h_final
        if self.every == 1:
            return self.checkpoints[step]
        segment = step // self.every
        if segment != self.segment:
            start = segment * self.every
            stop = min(start + self.every, self.steps)
            h = self.checkpoints[segment]
            self.states = [h]
            for s in range(start, stop - 1):
                h, _ = rk_step(self.field, self.tab, h, s, self.delta, self.work)
                self.states.append(h)
            self.segment = segment
        return self.states[step - segment * self.every]


def _storage_use_count(t: torch.Tensor) -> int | None:
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    # The temporary storage object made here holds one reference itself.
    return int(count(t.untyped_storage()._cdata)) - 1


class GradientPool:
    """Reuses a module's (nodes, D, K) gradient buffers once nothing else refers to them.

    NOTE: on CPU, writing a fresh 67 MB gradient (nodes = 129, K = 16384, D = 8,
    float32) costs ~50 ms of page faults (the kernel zeroes each 4 KiB page on
    first touch) against ~7 ms into touched memory: ~40% of a whole rk4
    forward + adjoint at that size. In a training loop the previous step's
    gradients are usually released (``zero_grad(set_to_none=True)``) or kept as
    ``param.grad`` while the new ones are accumulated into them; either way a
    buffer the pool still holds can be written again. A buffer is reused only
    when its storage has no reference but the pool's, so no gradient anyone can
    still see is ever overwritten. CUDA's caching allocator already recycles
    memory, so the pool is used on CPU only. It keeps at most ``size`` buffers.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.buffers: list[torch.Tensor] = []

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A (possibly uninitialized) tensor of ``shape`` with ``like``'s dtype and device."""
        if like.device.type != "cpu":
            return like.new_empty(shape)
        # Hand out views, never the pool's own tensor: a view holds its own reference
        # to the storage, so a buffer in use counts 2 and is not handed out twice.
        for buffer in self.buffers:
            if (tuple(buffer.shape) == tuple(shape) and buffer.dtype == like.dtype
                    and _storage_use_count(buffer) == 1):
                return buffer.view(shape)
        fresh = like.new_empty(shape)
        self.buffers.append(fresh)
        if len(self.buffers) > self.size:
            self.buffers.pop(0)
        return fresh.view(shape)

    def __deepcopy__(self, memo: dict) -> GradientPool:
        return GradientPool(self.size)

    def __getstate__(self) -> dict:
        # Pickling a module (torch.save, multiprocessing) must not carry spare buffers.
        return {"size": self.size, "buffers": []}


class SolveConfig:
    """The non-tensor arguments of a solve, passed through ``autograd.Function.apply``.

    Attributes:
        tab: the :class:`Tableau`. steps: N. multiplier: m. pre_scale: a.
        activation: the activation name. every: checkpoint segment length k,
        or None for backsolve (adjoint route only). return_nodes: also return
        h at the nodes. pool: a :class:`GradientPool` for the gradient
        buffers, or None for fresh ones.
    """

    __slots__ = ("activation", "every", "multiplier", "pool", "pre_scale", "return_nodes", "steps", "tab")

    def __init__(self, tab: Tableau, steps: int, multiplier: float, pre_scale: float, activation: str,
                 every: int | None, return_nodes: bool, pool: GradientPool | None = None) -> None:
        self.tab, self.steps = tab, steps
        self.multiplier, self.pre_scale, self.activation = multiplier, pre_scale, activation
        self.every, self.return_nodes, self.pool = every, return_nodes, pool

    def gradient_buffer(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialized gradient buffer, from the pool when there is one."""
        return like.new_empty(shape) if self.pool is None else self.pool.take(shape, like)


def feature_major(w: torch.Tensor) -> torch.Tensor:
    """(nodes, K, D) weights as a contiguous (nodes, D, K) tensor (a view when stored feature-major)."""
    wt = w.detach().transpose(1, 2)
    return wt if wt.is_contiguous() else wt.contiguous()


def make_field(u: torch.Tensor, v: torch.Tensor, config: SolveConfig, batch: int) -> Field:
    return Field(feature_major(u), feature_major(v), config.multiplier, config.pre_scale,
                 config.activation, batch)


def run_forward(ctx, h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, config: SolveConfig,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward of both autograd Functions: solve, save what the backward needs."""
    field = make_field(u, v, config, h0.shape[0])
    h1, checkpoints, nodes = forward_solve(field, config.tab, h0.detach(), config.steps, config.every,
                                           config.return_nodes)
    ctx.save_for_backward(checkpoints, h1, u, v)
    ctx.config = config
    if nodes is None:
        nodes = h0.new_empty((0,))
    ctx.mark_non_differentiable(nodes)
    return h1, nodes
