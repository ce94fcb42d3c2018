"""Fixed-grid explicit Runge–Kutta stepping of the mean ODE, forward and backward in depth.

One stage loop, :func:`explicit_rk`, serves every solve of the package: the
forward solve (keeping h at checkpoints), the recomputation of h inside a
checkpoint segment, the backward re-integration of h used by the backsolve
option, and the stage recomputation of the exact discrete gradient. The
plain references in :mod:`deepres.meanode.reference` keep a loop of their
own on purpose: they are the independent oracles the tests compare with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepres._checks import BACKSOLVE
from deepres.meanode.field import Field
from deepres.meanode.tableaus import Tableau

__all__ = [
    "StateProvider",
    "backward_step",
    "explicit_rk",
    "forward_solve",
    "midpoint_state",
    "rk_step",
    "top_node",
]


def explicit_rk(tab: Tableau, h: torch.Tensor, delta: float,
                stage: Callable[[int, torch.Tensor], torch.Tensor | None],
                *, first: torch.Tensor | None = None, output: bool = True,
                ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """One explicit RK step: Y_r = h + Δ Σ_{q<r} a_{rq} k_q, k_r = stage(r, Y_r), h + Δ Σ_r b_r k_r.

    Args:
        tab: the tableau. h: (B, D). delta: the signed step Δ (negative to
            integrate backward in depth).
        stage: (r, Y_r) ↦ k_r. It may return None for a stage whose k_r no
            later stage and no output reads.
        first: k_1 when it is already known (then ``stage(0, ·)`` is not called).
        output: form h + Δ Σ b_r k_r. Default True; False returns None for it.

    Returns:
        (the step's result or None, [k_1, …, k_s]).
    """
    ks: list[torch.Tensor] = []
    for r in range(tab.stages):
        if r == 0 and first is not None:
            ks.append(first)
            continue
        y = h
        for q, coef in enumerate(tab.a[r]):
            if coef:
                y = torch.add(y, ks[q], alpha=delta * coef)
        ks.append(stage(r, y))
    if not output:
        return None, ks
    out = h
    for r, coef in enumerate(tab.b):
        if coef:
            out = torch.add(out, ks[r], alpha=delta * coef)
    return out, ks


def rk_step(field: Field, tab: Tableau, h: torch.Tensor, step: int, delta: float, work: torch.Tensor,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the tableau from h_i (B, D) to h_{i+1}; also returns k_1 = F(h_i) at node(i, 0)."""
    out, ks = explicit_rk(tab, h, delta, lambda r, y: field.value(y, tab.node(step, r), work))
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

    def stage(r: int, y: torch.Tensor) -> torch.Tensor:
        node = min(tab.nodes_per_step * (step + 1) - tab.stage_nodes[r], last)
        return field.value(y, node, work)

    out, _ = explicit_rk(tab, h_hi, -delta, stage, first=f_hi)
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


def forward_solve(field: Field, tab: Tableau, h0: torch.Tensor, steps: int, every: int,
                  return_nodes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Integrate from h(0) = h0 (B, D) to h(1).

    Args:
        every: keep h before every ``every``-th step after the first (the first
            checkpoint is h0 itself, which the caller keeps); :data:`deepres._checks.BACKSOLVE`
            keeps nothing.
        return_nodes: also return h at every node, (nodes, B, D).

    Returns:
        (h(1), checkpoints (⌈N/every⌉ − 1, B, D) or an empty tensor, h at nodes or None).
    """
    delta = 1.0 / steps
    work = field.buffer()
    count = 0 if every == BACKSOLVE else -(-steps // every) - 1
    checkpoints = h0.new_empty((count, *h0.shape))
    path: list[tuple[torch.Tensor, torch.Tensor]] = []
    h = h0
    for step in range(steps):
        if every != BACKSOLVE and step % every == 0 and step > 0:
            checkpoints[step // every - 1].copy_(h)
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

    Checkpoint 0 is h0 itself; ``checkpoints`` holds those at steps k, 2k, ….
    With k > 1 it recomputes the segment [⌊i/k⌋·k, …) from its checkpoint when
    first asked, keeping its k states ((N/k + k)·B·D numbers in all).
    """

    def __init__(self, field: Field, tab: Tableau, steps: int, every: int, h0: torch.Tensor,
                 checkpoints: torch.Tensor, h_final: torch.Tensor) -> None:
        self.field, self.tab, self.steps, self.every = field, tab, steps, every
        self.h0, self.checkpoints, self.h_final = h0, checkpoints, h_final
        self.delta = 1.0 / steps
        self.segment = -1
        self.states: list[torch.Tensor] = []
        self.work = field.buffer() if every > 1 else None

    def _checkpoint(self, segment: int) -> torch.Tensor:
        return self.h0 if segment == 0 else self.checkpoints[segment - 1]

    def state(self, step: int) -> torch.Tensor:
        if step == self.steps:
            return self.h_final
        if self.every == 1:
            return self._checkpoint(step)
        segment = step // self.every
        if segment != self.segment:
            start = segment * self.every
            stop = min(start + self.every, self.steps)
            h = self._checkpoint(segment)
            self.states = [h]
            for s in range(start, stop - 1):
                h, _ = rk_step(self.field, self.tab, h, s, self.delta, self.work)
                self.states.append(h)
            self.segment = segment
        return self.states[step - segment * self.every]
