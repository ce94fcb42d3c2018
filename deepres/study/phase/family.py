"""The phase-diagram family of parameterizations and what one unit of the phase study measures.

Everything of ``mlu`` is kept except two exponents. Two families, one per diagram:

**In depth** (``diagram="depth"``, coordinates (β, γ), fixed M, D): u, v with
N(0, D) entries, pre-activation scale a = 1/D, and

    residual multiplier   c  = α · L^(−β) / M
    lr multiplier         lr = L^γ · M · D / α²          (on u and v)

``mlu`` is (β, γ) = (1, 1); the 1/√L branch of depth-μP is (1/2, 0) (c ∝ 1/√L,
no depth scaling of the learning rate).

**In dimension** (``diagram="dim"``, coordinates (δ, λ), fixed L, M): u, v with
unit-variance entries, a = 1/√D, and

    c  = α · D^δ / (L · M),      lr = L · M · D^λ / α².

(δ, λ) = (1/2, 0) is ``mlu`` written on unit-variance weights (u = √D·ũ: the
same network and the same gradient-descent trajectory in function space).

**Scaling argument (depth).** At initialization h_L − h_0 is a sum of L
independent mean-zero block outputs of size c·√M·√D each: it fluctuates like
L^(1/2−β). One gradient step moves a weight by η·lr·c·O(1/D), i.e. by a fraction
L^(γ−β) of its size, and the output by the coherent sum over the L·M units,
L·M·c²·lr ∝ L^(1+γ−2β). The line γ = 2β − 1 (output moves by O(1)) separates
unstable (above) from trivial (below); on it, units move by L^(β−1): o(1) for
β < 1 (the lazy ODE regime, effective α = L^(1−β)), O(1) at β = 1 (``mlu``,
complete feature learning), without bound for β > 1.

**Scaling argument (dimension).** The output moves by D^(λ+2δ−1) per step, a
unit's own pre-activation a·Δuᵀh by D^(λ+δ−1/2), and the output's fluctuation at
initialization is D^(δ−1/2)/√(LM). On the line λ = 1 − 2δ the pre-activations
move by D^(1/2−δ): only δ = 1/2, λ = 0, i.e. a residual scale √D/(LM) on
unit-variance weights, moves both the output and every unit by O(1). (A weight's
*relative* Frobenius movement, D^(λ+δ−1), is not the unit's movement in D: the
update of a D-vector is one coherent direction, as in μP's 1/fan-in rule.)

What one unit of the phase study measures with this family is in
:mod:`deepres.study.phase.measure`; :mod:`deepres.study.phase.analysis` fits the
exponents and classifies the points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepres.activations import activation_and_derivative
from deepres.functional import residual_stack
from deepres.study.shared.measures import lazy_flow
from deepres.training import replica_losses

__all__ = [
    "AXES",
    "DIAGRAMS",
    "PhaseScaling",
    "block_linearized_features",
    "block_linearized_stack",
    "hidden_states",
    "nonfinite_replicas",
    "phase_features",
    "phase_readout",
    "phase_scaling",
    "phase_step",
    "replica_losses",
]

#: The two diagrams: "depth" (exponents of L at fixed M, D) and "dim" (exponents of D at fixed L, M).
DIAGRAMS: tuple[str, ...] = ("depth", "dim")
#: Names of a point's two coordinates in each diagram.
AXES: dict[str, tuple[str, str]] = {"depth": ("beta", "gamma"), "dim": ("delta", "lr_exponent")}


@dataclass(frozen=True)
class PhaseScaling:
    """Initialization and scales of one network of the family.

    Attributes:
        init_std: standard deviation of every entry of u and v.
        pre_scale: a in σ(a·uᵀh). multiplier: c. lr_multiplier: factor on η for u and v.
    """

    init_std: float
    pre_scale: float
    multiplier: float
    lr_multiplier: float


def phase_scaling(diagram: str, point: Sequence[float], *, depth: int, hidden: int, dim: int,
                  alpha: float = 1.0) -> PhaseScaling:
    """The scaling of one point of a diagram (see the module docstring).

    Args:
        diagram: ``"depth"`` (point = (β, γ)) or ``"dim"`` (point = (δ, λ)).
        point: the two exponents. depth: L. hidden: M. dim: D. alpha: α > 0. Default 1.0.

    Returns:
        A :class:`PhaseScaling`.

    Example:
        >>> s = phase_scaling("depth", (1.0, 1.0), depth=64, hidden=4, dim=8)   # mlu
        >>> s.init_std**2, s.pre_scale, s.multiplier, s.lr_multiplier
        (8.000000000000002, 0.125, 0.00390625, 2048.0)
    """
    if diagram not in DIAGRAMS:
        raise ValueError(f"diagram must be one of {DIAGRAMS}; got {diagram!r}")
    if len(point) != 2 or not all(math.isfinite(float(p)) for p in point):
        raise ValueError(f"point must be two finite exponents; got {point!r}")
    for name, value in (("depth", depth), ("hidden", hidden), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int ≥ 1; got {value!r}")
    if not float(alpha) > 0:
        raise ValueError(f"alpha must be > 0; got {alpha!r}")
    first, second = (float(p) for p in point)
    if diagram == "depth":
        return PhaseScaling(math.sqrt(dim), 1.0 / dim, alpha * depth ** -first / hidden,
                            depth ** second * hidden * dim / alpha**2)
    return PhaseScaling(1.0, 1.0 / math.sqrt(dim), alpha * dim ** first / (depth * hidden),
                        depth * hidden * dim ** second / alpha**2)


def phase_features(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scaling: PhaseScaling, *,
                   activation: str = "tanh", backend: str = "torch") -> torch.Tensor:
    """h_L of the residual stack with the family's c and a (:func:`deepres.residual_stack`).

    Args:
        h0: (R, N, D). u, v: (R, L, M, D). scaling: the point's :class:`PhaseScaling`.
        activation: Default ``"tanh"``. backend: Default ``"torch"``.

    Returns:
        h_L, (R, N, D).

    Example:
        >>> s = phase_scaling("depth", (0.5, 0.0), depth=16, hidden=2, dim=4)
        >>> u, v = s.init_std * torch.randn(3, 16, 2, 4), s.init_std * torch.randn(3, 16, 2, 4)
        >>> phase_features(torch.randn(3, 10, 4), u, v, s).shape
        torch.Size([3, 10, 4])
    """
    return residual_stack(h0, u, v, multiplier=scaling.multiplier, pre_scale=scaling.pre_scale,
                          activation=activation, backend=backend)


def phase_readout(h: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """f = W_Uᵀ h / D, the convention of :class:`deepres.DeepResNet`: (..., N, D) → (..., N, d_out)."""
    return h @ readout / readout.shape[0]


def nonfinite_replicas(f: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """(R,) bool: the replicas whose loss or any output entry is not finite."""
    return ~torch.isfinite(losses) | ~torch.isfinite(f).flatten(1).all(1)


def phase_step(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor, embed: torch.Tensor,
               readout: torch.Tensor, scaling: PhaseScaling, *, eta: float, activation: str = "tanh",
               backend: str = "torch", frozen: torch.Tensor | None = None) -> torch.Tensor:
    """One full-batch gradient step, in place: w ← w − η·lr_multiplier·∂loss/∂w for w = u, v.

    The loss of replica r is ½·mean over samples of ‖f_r(x) − y‖²; replicas are
    independent, so each gets the gradient of its own loss (as :func:`deepres.train`).

    Args:
        u, v: (R, L, M, D), updated in place. x: (N, d_in). y: (N, d_out).
        embed: W_E (D, d_in). readout: W_U (D, d_out). scaling: the point's scales.
        eta: base learning rate η. activation: Default ``"tanh"``. backend: Default ``"torch"``.
        frozen: (R,) bool, replicas left unchanged. Default None (none).

    Returns:
        The losses before the step, (R,).

    Example:
        >>> R, L, M, D = 2, 8, 2, 4
        >>> s = phase_scaling("depth", (1.0, 1.0), depth=L, hidden=M, dim=D)
        >>> u, v = s.init_std * torch.randn(R, L, M, D), s.init_std * torch.randn(R, L, M, D)
        >>> x, y = torch.randn(10, 5), torch.randn(10, 5)
        >>> phase_step(u, v, x, y, torch.randn(D, 5), torch.randn(D, 5), s, eta=0.1).shape
        torch.Size([2])
    """
    h0 = (x @ embed.T).unsqueeze(0).expand(u.shape[0], -1, -1)
    leaves = [u.detach().requires_grad_(), v.detach().requires_grad_()]
    with torch.enable_grad():
        h = phase_features(h0, *leaves, scaling, activation=activation, backend=backend)
        f = phase_readout(h, readout)
        losses = replica_losses(f, y)
        keep = ~nonfinite_replicas(f, losses)
        if frozen is not None:
            keep &= ~frozen
        total = torch.where(keep, losses, torch.zeros_like(losses)).sum()
        grads = torch.autograd.grad(total, leaves) if bool(keep.any()) else None
    if grads is not None:
        with torch.no_grad():
            for weight, grad in zip((u, v), grads, strict=True):
                grad[~keep] = 0.0
                weight.sub_(grad, alpha=eta * scaling.lr_multiplier)
    return losses.detach()


def hidden_states(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scaling: PhaseScaling, *,
                  activation: str = "tanh") -> torch.Tensor:
    """The input h_{l−1} of every block l (plain per-layer loop, no gradient).

    Args:
        h0: (R, N, D). u, v: (R, L, M, D). scaling: the point's scales. activation: Default ``"tanh"``.

    Returns:
        (R, L, N, D); entry l is the input of block l (entry 0 is h0).
    """
    states = []
    h = h0
    with torch.no_grad():
        for u_l, v_l in zip(u.unbind(1), v.unbind(1), strict=True):
            states.append(h)
            s, _ = activation_and_derivative(activation, scaling.pre_scale * (h @ u_l.transpose(-1, -2)))
            h = h + scaling.multiplier * (s @ v_l)
    return torch.stack(states, 1)


def block_linearized_features(h0: torch.Tensor, u0: torch.Tensor, v0: torch.Tensor, u: torch.Tensor,
                              v: torch.Tensor, scaling: PhaseScaling, *, activation: str = "tanh",
                              ) -> torch.Tensor:
    """h_L of the lazy-ODE model: every block linear in its own weights around (u0, v0).

    Block l: ``h ← h + c·[σ(a·h u0ᵀ) v + (σ'(a·h u0ᵀ) ⊙ a·h (u − u0)ᵀ) v0]``, the blocks
    still composed (:func:`deepres.study.shared.measures.lazy_flow`, the model of
    :class:`deepres.study.convergence.lazy.BlockLinearizedNet`, here for the family's scales).
    Plain autograd, differentiable in u and v.

    Args:
        h0: (R, N, D). u0, v0: the initial weights, (R, L, M, D). u, v: the current ones.
        scaling: the point's scales. activation: Default ``"tanh"``.

    Returns:
        (R, N, D).
    """
    return lazy_flow(h0, u0, v0, u, v, multiplier=scaling.multiplier, pre_scale=scaling.pre_scale,
                     activation=activation)


#: Half-width ε of the central difference in :func:`block_linearized_stack`.
_FD_STEP = 1e-4


def block_linearized_stack(h0: torch.Tensor, u0: torch.Tensor, v0: torch.Tensor, u: torch.Tensor,
                           v: torch.Tensor, scaling: PhaseScaling, *, activation: str = "tanh",
                           backend: str = "torch") -> torch.Tensor:
    """:func:`block_linearized_features` through the fused stack, by a central difference.

    The tangent term of block l, σ'(a·h u0ᵀ) ⊙ (a·h duᵀ) v0 with du = u − u0, is
    [σ(a·h (u0 + ε du)ᵀ) − σ(a·h (u0 − ε du)ᵀ)] v0 / (2ε) + O(ε²): the block is a
    3M-unit block of the ordinary form, with input weights (u0, u0 + ε du, u0 − ε du)
    and output weights (v, v0/(2ε), −v0/(2ε)), which :func:`deepres.residual_stack`
    runs (and differentiates) in one call. With ε = 10⁻⁴ in float64 the truncation
    (ε²) and the cancellation (10⁻¹⁶/ε) errors are both near 10⁻¹⁰ of the change of h.

    Args:
        h0, u0, v0, u, v, scaling, activation: as :func:`block_linearized_features`.
        backend: as :func:`phase_features`. Default ``"torch"``. Use float64: in float32
            the cancellation error is about 10⁻³ of the change of h.

    Returns:
        (R, N, D).

    Example:
        >>> s = phase_scaling("depth", (1.0, 1.0), depth=4, hidden=2, dim=3)
        >>> u0, v0, u, v = (torch.randn(2, 4, 2, 3, dtype=torch.float64) for _ in range(4))
        >>> h0 = torch.randn(2, 5, 3, dtype=torch.float64)
        >>> plain = block_linearized_features(h0, u0, v0, u, v, s)
        >>> bool(torch.allclose(block_linearized_stack(h0, u0, v0, u, v, s), plain, atol=1e-8))
        True
    """
    # NOTE: the plain per-layer autograd model took 1.2–1.3 s for a forward and backward at
    # L = 256, R = 64, M = D = 4 on the 2-core CPU (load 6), this one 0.6–0.9 s, the network 0.6 s;
    # the two agreed to 2·10⁻¹⁰ (relative to the change of h) and gradients to 4·10⁻¹⁰.
    step = u - u0
    weights_in = torch.cat([u0, u0 + _FD_STEP * step, u0 - _FD_STEP * step], 2)
    weights_out = torch.cat([v, v0 / (2 * _FD_STEP), v0 / (-2 * _FD_STEP)], 2)
    return phase_features(h0, weights_in, weights_out, scaling, activation=activation, backend=backend)
