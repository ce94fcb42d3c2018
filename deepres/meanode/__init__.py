"""The Neural Mean ODE: the infinite-depth limit of the residual stack (docs/design.md §2).

:class:`MeanODE` integrates ∂_s h = α·(1/K)·Σ_k v_k(s) σ(a·u_k(s)ᵀh) with K
particles on a fixed depth grid (euler, midpoint, rk4), with two gradient
routes (the ODE adjoint and the exact gradient of the discrete solve);
:class:`MeanODENet` adds the embedding and readout of :class:`deepres.DeepResNet`.
See docs/meanode.md.
"""

from deepres.meanode.modules import GRADIENTS, MeanODE, MeanODENet
from deepres.meanode.particles import PARTICLE_INITS, init_particles
from deepres.meanode.tableaus import SOLVERS, TABLEAUS, Tableau

__all__ = [
    "GRADIENTS",
    "PARTICLE_INITS",
    "SOLVERS",
    "TABLEAUS",
    "MeanODE",
    "MeanODENet",
    "Tableau",
    "init_particles",
]
