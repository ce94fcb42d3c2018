"""The lazy regime: α → ∞ with the 1/α² learning rate (docs/design.md §3).

With the ``mlu`` parameterization the residual scale is α/(L·M) and the lr
multiplier L·M·D/α², so the output moves by O(1) in a fixed number of steps while
each weight moves by O(1/α): as α grows, training stays closer and closer to its
linearization around the initialization θ_0,

    f_lin(θ) = f(θ_0) + J_{θ_0}·(θ − θ_0),

trained by the same gradient descent (same η, same lr multiplier). Two numbers
measure laziness, both expected to decay like 1/α (slope −1 in log-log):

* relative weight movement ‖θ_K − θ_0‖ / ‖θ_0‖ over u and v;
* relative distance to the *lazy ODE* RMS(f_K − f_ode,K) / RMS(f_K − f_0), where
  f_ode is the network whose blocks are linearized in their own weights but still
  composed (the field is linear in the parameters, the flow is not):

      h ← h + c · Σ_j [ v_j σ(a·u0_jᵀh) + v0_j σ'(a·u0_jᵀh) · a·(u_j − u0_j)ᵀh ].

A third number is reported for contrast: the distance to the linearization of the
whole network, RMS(f_K − f_lin,K) / RMS(f_K − f_0). It need not vanish: the
trained flow moves h by O(1), and the field's O(α)·O(1/α) = O(1) dependence on h
keeps the map θ ↦ h(1) nonlinear at O(1), whatever α. Measuring both shows which
linear model the α → ∞ network approaches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from deepres.activations import activation_and_derivative
from deepres.functional import residual_stack
from deepres.scaling import ScaledParameter
from deepres.study.compare import build_resnet
from deepres.training import train

__all__ = ["BlockLinearizedNet", "lazy_measurements", "linearized_training"]


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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net.embed(x)  # type: ignore[operator]
        for u0, v0, u, v in zip(self.u0.unbind(-3), self.v0.unbind(-3), self.u.unbind(-3),
                                self.v.unbind(-3), strict=True):
            s, ds = activation_and_derivative(self.act, self.a * (h @ u0.transpose(-1, -2)))
            tangent = ds * (self.a * (h @ (u - u0).transpose(-1, -2)))
            h = h + self.c * (s @ v + tangent @ v0)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.features(x))


def linearized_training(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, eta: float,
                        ) -> torch.Tensor:
    """Train the linearization of a replicated DeepResNet around its current weights.

    Each step: r = (f_lin − y)/N, g = Jᵀr (one reverse pass through the linearization
    point, kept), θ ← θ − η·lr_multiplier·g, f_lin ← f_lin + J·Δθ (one forward-mode
    product). The replicas are independent (J is block diagonal over replicas).

    Args:
        net: a :class:`deepres.DeepResNet` with replicas; it is not modified.
        x: (N, d_in). y: (N, d_out). steps: K. eta: η.

    Returns:
        f_lin after K steps, (R, N, d_out).
    """
    stack = net.stack  # type: ignore[attr-defined]
    u0 = stack.u.detach()
    v0 = stack.v.detach()
    h0 = net.embed(x).detach()  # type: ignore[operator]

    def forward(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        h = residual_stack(h0, u, v, multiplier=stack.multiplier, pre_scale=stack.pre_scale,
                           activation=stack.activation, backend="reference")
        return net.readout(h)  # type: ignore[operator]

    f0, pullback = torch.func.vjp(forward, u0, v0)
    f_lin = f0.clone()
    samples = x.shape[0]
    lr = eta * float(stack.lr_multiplier)
    for _ in range(steps):
        grad_u, grad_v = pullback((f_lin - y) / samples)
        _, moved = torch.func.jvp(forward, (u0, v0), (-lr * grad_u, -lr * grad_v))
        f_lin = f_lin + moved
    return f_lin


def lazy_measurements(x: torch.Tensor, y: torch.Tensor, embed: torch.Tensor, readout: torch.Tensor, *,
                      depth: int, hidden: int, replicas: int, alpha: float, eta: float, steps: int,
                      activation: str = "tanh", seed: int = 0) -> dict[str, Any]:
    """Train R ResNets and their linearizations; measure how lazy training was.

    The networks start from paired units (see :func:`deepres.study.compare.build_resnet`):
    f(θ_0) is then the same for every α, so only the laziness of training changes
    with α, not the initial function (whose i.i.d. fluctuation would grow like α).

    Args:
        x: (N, d_in). y: (N, d_out). embed, readout: shared W_E (D, d_in), W_U (D, d_out).
        depth: L. hidden: M. replicas: R. alpha: α. eta: η. steps: K.
        activation: Default ``"tanh"``. seed: seed of the weights. Default 0.

    Returns:
        dict of (R,) tensors: ``weight_movement`` ‖θ_K − θ_0‖/‖θ_0‖,
        ``lazy_ode_distance`` RMS(f_K − f_ode,K)/RMS(f_K − f_0) (see the module docstring),
        ``linearization_distance`` RMS(f_K − f_lin,K)/RMS(f_K − f_0), ``output_movement``
        RMS(f_K − f_0), ``final_loss``, and ``nonfinite`` (bool).
    """
    net = build_resnet(embed, readout, depth=depth, hidden=hidden, replicas=replicas, alpha=alpha,
                       activation=activation, paired_units=True, seed=seed)
    theta0 = torch.cat([net.stack.u.detach().flatten(1), net.stack.v.detach().flatten(1)], 1).clone()
    f_lin = linearized_training(net, x, y, steps=steps, eta=eta)
    lazy_ode = train(BlockLinearizedNet(net), x, y, steps=steps, eta=eta, record_features=False)
    result = train(net, x, y, steps=steps, eta=eta, record_steps=[0, steps], record_features=False)
    theta = torch.cat([net.stack.u.detach().flatten(1), net.stack.v.detach().flatten(1)], 1)
    f0, fk = result.recorded_outputs[0].double(), result.recorded_outputs[-1].double()
    per = lambda t: t.pow(2).flatten(1).mean(1).sqrt()  # RMS per replica
    moved = per(fk - f0)
    return {
        "weight_movement": ((theta - theta0).double().norm(dim=1) / theta0.double().norm(dim=1)).cpu(),
        "lazy_ode_distance": (per(fk - lazy_ode.outputs.double()) / moved).cpu(),
        "linearization_distance": (per(fk - f_lin.double()) / moved).cpu(),
        "output_movement": moved.cpu(),
        "final_loss": result.losses[-1].cpu(),
        "nonfinite": (result.nonfinite | lazy_ode.nonfinite
                      | ~torch.isfinite(f_lin).flatten(1).all(1)).cpu(),
    }
