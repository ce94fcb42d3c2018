"""Explicit Runge–Kutta tableaus on the depth grid, with one parameter node per distinct stage time.

A solver with N steps of size Δ = 1/N moves h from s = i·Δ to (i+1)·Δ by

    Y_r = h_i + Δ · Σ_{q<r} a_{rq} k_q,    k_r = F(Y_r, θ at node(i, r)),    h_{i+1} = h_i + Δ · Σ_r b_r k_r.

The parameters θ = (u, v) live on a grid of *nodes*, one per distinct stage
time, so that every stage reads its own node and no interpolation of the
parameters caps the solver's order:

=========  ==========  ==================  ===================================  ==========================
solver     order       nodes               stage nodes of step i                node weights q_j / Δ
=========  ==========  ==================  ===================================  ==========================
euler      1           N, at i/N           i                                    1 (all)
midpoint   2           2N, at j/(2N)       2i, 2i+1                             1 (all; see below)
rk4        4           2N+1, at j/(2N)     2i, 2i+1, 2i+1, 2i+2 (shared ends)   1/6, 2/3, 1/3, …, 2/3, 1/6
=========  ==========  ==================  ===================================  ==========================

The node weight q_j is the quadrature weight of node j in ∫₀¹ g(s) ds ≈ Σ_j q_j g(s_j)
that the solver's b-weights induce (the sum of Δ·b_r over the stages reading
node j): Simpson's rule for rk4, the left rectangle rule for euler, the
midpoint rule for midpoint. The explicit midpoint method reads its start
nodes 2i only in the predictor (b_1 = 0), so their induced weight is 0; they
are given the weight Δ of the step instead, a convention that keeps the
gradient-descent step pointwise at those nodes too (see docs/meanode.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SOLVERS", "TABLEAUS", "Tableau"]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge–Kutta scheme with its parameter-node layout.

    Attributes:
        name: the solver name.
        order: the classical order p.
        nodes_per_step: 1 (nodes at i/N) or 2 (nodes at j/(2N)).
        stage_nodes: node offset (in units of 1/nodes_per_step of a step) of each stage.
        a: the strictly lower-triangular Butcher matrix, one row per stage.
        b: the output weights, one per stage.
        end_node: True when the grid has a node at s = 1 (rk4).

    Example:
        >>> tab = TABLEAUS["rk4"]
        >>> tab.num_nodes(4), [tab.node(1, r) for r in range(tab.stages)]
        (9, [2, 3, 3, 4])
    """

    name: str
    order: int
    nodes_per_step: int
    stage_nodes: tuple[int, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    end_node: bool

    @property
    def stages(self) -> int:
        return len(self.b)

    def num_nodes(self, steps: int) -> int:
        """Number of parameter nodes for ``steps`` steps."""
        return self.nodes_per_step * steps + (1 if self.end_node else 0)

    def node(self, step: int, stage: int) -> int:
        """Index of the node read by ``stage`` of step ``step``."""
        return self.nodes_per_step * step + self.stage_nodes[stage]

    def node_times(self, steps: int, dtype: torch.dtype = torch.float64,
                   device: torch.device | str | None = None) -> torch.Tensor:
        """The depth times s_j ∈ [0, 1] of the nodes, shape (nodes,)."""
        count = self.num_nodes(steps)
        return torch.arange(count, dtype=torch.float64).div_(self.nodes_per_step * steps).to(
            device=device, dtype=dtype)

    def quadrature_weights(self, steps: int) -> list[float]:
        """The weights the tableau induces on the nodes: Σ of Δ·b_r over the stages reading node j.

        euler: Δ (left rectangle rule); midpoint: 0 at the nodes 2i, Δ at the
        half-step nodes (midpoint rule); rk4: composite Simpson,
        Δ·(1/6, 2/3, 1/3, 2/3, …, 1/3, 2/3, 1/6). ∫₀¹ g ds ≈ Σ_j q_j g(s_j) to the solver's order.
        """
        delta = 1.0 / steps
        weights = [0.0] * self.num_nodes(steps)
        for step in range(steps):
            for r, coef in enumerate(self.b):
                weights[self.node(step, r)] += delta * coef
        return weights

    def node_weights(self, steps: int) -> list[float]:
        """The weights q_j that multiply the gradient density at node j in the adjoint route.

        The induced :meth:`quadrature_weights`, except that nodes the tableau
        gives no weight (midpoint's 2i) get Δ, so that every node has a finite
        lr multiplier and moves pointwise.
        """
        delta = 1.0 / steps
        return [w if w > 0 else delta for w in self.quadrature_weights(steps)]


TABLEAUS: dict[str, Tableau] = {
    "euler": Tableau("euler", 1, 1, (0,), ((),), (1.0,), False),
    "midpoint": Tableau("midpoint", 2, 2, (0, 1), ((), (0.5,)), (0.0, 1.0), False),
    "rk4": Tableau("rk4", 4, 2, (0, 1, 1, 2), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                   (1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0), True),
}

#: Names accepted by the ``solver`` argument.
SOLVERS: tuple[str, ...] = tuple(TABLEAUS)
