"""The lazy regime: α → ∞ with the 1/α² learning rate, and what the network approaches.

With the ``mlu`` parameterization the residual scale is c = α/(L·M) and the lr
multiplier L·M·D/α², so in a fixed number K of steps the output moves by O(1)
while each weight moves by O(1/α). Write θ = θ_0 + δ/α. The networks start from
*paired units* (units j and j + M/2 of a block are (u, v) and (u, −v)): the
network is the identity map at initialization, whatever α, and the zeroth-order
field Σ_j v0_j σ(a·u0_jᵀh) vanishes for every h. Three measurements:

* **weight movement** ‖θ_K − θ_0‖/‖θ_0‖ = ‖δ_K‖/(α‖θ_0‖): slope −1 in α.
* **distance to the lazy ODE**, RMS(f_K − f_ode,K)/RMS(f_K − f_0). The lazy ODE has
  every block linearized in its own weights, the blocks still composed:

      h ← h + c · Σ_j [ v_j σ(a·u0_jᵀh) + v0_j σ'(a·u0_jᵀh) · a·(u_j − u0_j)ᵀh ].

  Its field is c·(first-order term in δ/α) = (1/(L·M))·(linear in δ): α cancels, and
  so does it in the updates of δ (lr L·M·D/α² on a gradient α times that in δ), so
  f_ode,K is the same for every α. The network's field differs from it by the
  second-order terms, (1/α)·(1/(L·M))·[δv σ'·a δuᵀh + v0 σ''·(a δuᵀh)²/2]; in a pair the
  first updates are δv_j = δv_{j+M/2} and δu_j = −δu_{j+M/2} (the gradient in u is
  proportional to v), so both terms cancel between the two units to leading order,
  and the distance decays like **1/α²** (slope −2) once α is past the transition.
* **distance to the network's linearization** f_lin = f_0 + J·(θ − θ_0) (trained by the
  same gradient descent), RMS(f_K − f_lin,K)/RMS(f_K − f_0). It does *not* vanish:
  J·(θ − θ_0) = J_δ·δ with J_δ α-free, so f_lin,K is α-free too, and the distance
  tends to the distance between the lazy ODE and its own tangent model (the two
  share their first derivative at θ_0):

      d_∞ = RMS(f_ode,K − f_tan,K) / RMS(f_ode,K − f_0),

  positive because the composition of the O(1) linearly parameterized fields is
  not linear in δ. :func:`lazy_limit` computes d_∞ directly, once, at α = 1 (the
  α-free system in δ); each α's linearization distance is reported against it.

Every α of a sweep starts from the same initial weights (common random numbers):
the differences between α are then the effect of α alone, not of another draw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from deepres.functional import residual_stack
from deepres.scaling import ScaledParameter
from deepres.study.convergence.compare import build_resnet
from deepres.study.shared.measures import lazy_flow, replica_rms
from deepres.training import train

__all__ = ["BlockLinearizedNet", "lazy_limit", "lazy_measurements", "linearized_training",
           "tangent_training"]

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BlockLinearizedNet(nn.Module):
    """The lazy-ODE model of a replicated DeepResNet: each block linear in its own weights.

    Block l: ``h ← h + c·[σ(a·h u0ᵀ) v + (σ'(a·h u0ᵀ) ⊙ (a·h (u − u0)ᵀ)) v0]`` with the
    initial weights u0, v0 frozen; u, v are trained with the network's lr multiplier.
    Plain autograd (small sizes only).

    Args:
        net: the :class:`deepres.DeepResNet` (with replicas) to linearize, at its initialization.

    Example:
        >>> from deepres import DeepResNet
        >>> lin = BlockLinearizedNet(DeepResNet(5, 5, depth=4, dim=4, hidden=2, replicas=2))
        >>> lin(torch.randn(3, 5)).shape
        torch.Size([2, 3, 5])
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        stack = net.stack  # type: ignore[attr-defined]
        self.net = net
        self.register_buffer("u0", stack.u.detach().clone())
        self.register_buffer("v0", stack.v.detach().clone())
        self.u = nn.Parameter(stack.u.detach().clone())
        self.v = nn.Parameter(stack.v.detach().clone())
        self.c, self.a, self.act = stack.multiplier, stack.pre_scale, stack.activation
        self.lr_multiplier = stack.lr_multiplier

    def scaled_parameters(self) -> Iterator[ScaledParameter]:
        """u and v with the network's lr multiplier (see :mod:`deepres.scaling`)."""
        stack = self.net.stack  # type: ignore[attr-defined]
        for name in ("u", "v"):
            yield ScaledParameter(name, getattr(self, name), self.lr_multiplier, name,
                                  stack.parameterization, replica_axis=stack.replicas is not None)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.net.readout(h)  # type: ignore[operator]

    def features_at(self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """h(1) of the lazy ODE at weights (u, v), (R, N, D), as a function of them."""
        return lazy_flow(self.net.embed(x), self.u0, self.v0, u, v,  # type: ignore[operator]
                         multiplier=self.c, pre_scale=self.a, activation=self.act)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_at(x, self.u, self.v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.features(x))


def tangent_training(forward: Forward, u0: torch.Tensor, v0: torch.Tensor, y: torch.Tensor, *, steps: int,
                     eta: float, lr_multiplier: float) -> torch.Tensor:
    """Train the tangent model f_0 + J·(θ − θ_0) of ``forward`` at (u0, v0) by gradient descent.

    Each step: r = (f_lin − y)/N, g = Jᵀr (one reverse pass through the linearization
    point, kept), θ ← θ − η·lr_multiplier·g, f_lin ← f_lin + J·Δθ (one forward-mode
    product). The loss is ½·mean over samples of ‖f − y‖², as in :func:`deepres.train`.

    Args:
        forward: (u, v) ↦ f, (R, N, d_out); replicas must be independent (J block
            diagonal over replicas). u0, v0: the linearization point, (R, L, M, D).
        y: targets (N, d_out). steps: K. eta: η. lr_multiplier: of u and v.

    Returns:
        f_lin after K steps, (R, N, d_out).
    """
    f0, pullback = torch.func.vjp(forward, u0, v0)
    f_lin = f0.clone()
    samples = y.shape[0]
    lr = eta * float(lr_multiplier)
    for _ in range(steps):
        grad_u, grad_v = pullback((f_lin - y) / samples)
        _, moved = torch.func.jvp(forward, (u0, v0), (-lr * grad_u, -lr * grad_v))
        f_lin = f_lin + moved
    return f_lin


def linearized_training(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, eta: float,
                        ) -> torch.Tensor:
    """Train the linearization of a replicated DeepResNet around its current weights.

    See :func:`tangent_training`; the network is not modified.

    Args:
        net: a :class:`deepres.DeepResNet` with replicas.
        x: (N, d_in). y: (N, d_out). steps: K. eta: η.

    Returns:
        f_lin after K steps, (R, N, d_out).
    """
    stack = net.stack  # type: ignore[attr-defined]
    h0 = net.embed(x).detach()  # type: ignore[operator]

    def forward(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        h = residual_stack(h0, u, v, multiplier=stack.multiplier, pre_scale=stack.pre_scale,
                           activation=stack.activation, backend=stack.backend)
        return net.readout(h)  # type: ignore[operator]

    return tangent_training(forward, stack.u.detach(), stack.v.detach(), y, steps=steps, eta=eta,
                            lr_multiplier=stack.lr_multiplier)


def lazy_measurements(x: torch.Tensor, y: torch.Tensor, embed: torch.Tensor, readout: torch.Tensor, *,
                      depth: int, hidden: int, replicas: int, alpha: float, eta: float, steps: int,
                      activation: str = "tanh", seed: int = 0) -> dict[str, Any]:
    """Train R ResNets, their lazy ODEs and their linearizations at one α; measure laziness.

    The networks start from paired units (see :func:`deepres.study.convergence.compare.build_resnet`):
    f(θ_0) is then the same for every α, so only the laziness of training changes
    with α, not the initial function (whose i.i.d. fluctuation would grow like α).
    Pass the same ``seed`` for every α (common random numbers): the initial weights
    are then the same draw at every α (they do not depend on α).

    Args:
        x: (N, d_in). y: (N, d_out). embed, readout: shared W_E (D, d_in), W_U (D, d_out).
        depth: L. hidden: M (even). replicas: R. alpha: α. eta: η. steps: K.
        activation: Default ``"tanh"``. seed: seed of the initial weights. Default 0.

    Returns:
        dict of (R,) tensors: ``weight_movement`` ‖θ_K − θ_0‖/‖θ_0‖,
        ``lazy_ode_distance`` RMS(f_K − f_ode,K)/RMS(f_K − f_0) (see the module docstring),
        ``linearization_distance`` RMS(f_K − f_lin,K)/RMS(f_K − f_0), ``output_movement``
        RMS(f_K − f_0), ``final_loss``, and ``nonfinite`` (bool).

    Example:
        >>> x, y, we, wu = torch.randn(6, 3), torch.randn(6, 2), torch.randn(4, 3), torch.randn(4, 2)
        >>> out = lazy_measurements(x, y, we, wu, depth=2, hidden=2, replicas=2, alpha=4.0, eta=0.1,
        ...                         steps=2)
        >>> out["lazy_ode_distance"].shape
        torch.Size([2])
    """
    net = build_resnet(embed, readout, depth=depth, hidden=hidden, replicas=replicas, alpha=alpha,
                       activation=activation, paired_units=True, seed=seed)
    theta0 = torch.cat([net.stack.u.detach().flatten(1), net.stack.v.detach().flatten(1)], 1).clone()
    f_lin = linearized_training(net, x, y, steps=steps, eta=eta)
    lazy_ode = train(BlockLinearizedNet(net), x, y, steps=steps, eta=eta, record_features=False)
    result = train(net, x, y, steps=steps, eta=eta, record_steps=[0, steps], record_features=False)
    theta = torch.cat([net.stack.u.detach().flatten(1), net.stack.v.detach().flatten(1)], 1)
    f0, fk = result.recorded_outputs[0].double(), result.recorded_outputs[-1].double()
    moved = replica_rms((fk - f0).double())
    return {
        "weight_movement": ((theta - theta0).double().norm(dim=1) / theta0.double().norm(dim=1)).cpu(),
        "lazy_ode_distance": (replica_rms((fk - lazy_ode.outputs).double()) / moved).cpu(),
        "linearization_distance": (replica_rms((fk - f_lin).double()) / moved).cpu(),
        "output_movement": moved.cpu(),
        "final_loss": result.losses[-1].cpu(),
        "nonfinite": (result.nonfinite | lazy_ode.nonfinite
                      | ~torch.isfinite(f_lin).flatten(1).all(1)).cpu(),
    }


def lazy_limit(x: torch.Tensor, y: torch.Tensor, embed: torch.Tensor, readout: torch.Tensor, *, depth: int,
               hidden: int, replicas: int, eta: float, steps: int, activation: str = "tanh", seed: int = 0,
               ) -> dict[str, Any]:
    """The α → ∞ limit of the linearization distance: d_∞ between the lazy ODE and its tangent.

    Trains the lazy ODE (:class:`BlockLinearizedNet`) and its own tangent model
    f_0 + J_ode·(θ − θ_0) (:func:`tangent_training`) at α = 1, which is the α-free
    system in the rescaled weights δ = α(θ − θ_0) (see the module docstring), from
    the paired-unit weights that :func:`lazy_measurements` draws with the same seed.

    Args:
        x, y, embed, readout, depth, hidden, replicas, eta, steps, activation, seed: as for
            :func:`lazy_measurements` (no α).

    Returns:
        dict of (R,) tensors: ``d_inf`` RMS(f_ode,K − f_tan,K)/RMS(f_ode,K − f_0),
        ``ode_movement`` RMS(f_ode,K − f_0), ``nonfinite`` (bool).

    Example:
        >>> x, y, we, wu = torch.randn(6, 3), torch.randn(6, 2), torch.randn(4, 3), torch.randn(4, 2)
        >>> lazy_limit(x, y, we, wu, depth=2, hidden=2, replicas=2, eta=0.1, steps=2)["d_inf"].shape
        torch.Size([2])
    """
    net = build_resnet(embed, readout, depth=depth, hidden=hidden, replicas=replicas, alpha=1.0,
                       activation=activation, paired_units=True, seed=seed)
    lazy = BlockLinearizedNet(net)
    u0, v0 = lazy.u0.clone(), lazy.v0.clone()

    def forward(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return lazy.readout(lazy.features_at(x, u, v))

    f_tan = tangent_training(forward, u0, v0, y, steps=steps, eta=eta, lr_multiplier=lazy.lr_multiplier)
    result = train(lazy, x, y, steps=steps, eta=eta, record_steps=[0, steps], record_features=False)
    f0, fk = result.recorded_outputs[0].double(), result.recorded_outputs[-1].double()
    moved = replica_rms((fk - f0).double())
    return {"d_inf": (replica_rms((fk - f_tan).double()) / moved).cpu(), "ode_movement": moved.cpu(),
            "nonfinite": (result.nonfinite | ~torch.isfinite(f_tan).flatten(1).all(1)).cpu()}
