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

A unit of the study (:func:`run_phase_unit`) is one (diagram, point, L, M, D):
R replicas trained side by side on the study's task with the shared embedding
and readout. It measures, per replica, the first gradient step (at a base
learning rate halved until the output change is linear in it) and K steps
(output movement, weight movement, loss decrease, distance to the
block-linearized model, non-finite replicas). :mod:`deepres.study.phase_analysis`
fits the exponents and classifies the points.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from deepres.activations import activation_and_derivative
from deepres.functional import residual_stack
from deepres.study.compare import coupling_weights
from deepres.study.data import make_task
from deepres.study.sweep import derived_seed

__all__ = [
    "AXES",
    "DIAGRAMS",
    "PhaseScaling",
    "block_linearized_features",
    "block_linearized_stack",
    "first_step",
    "hidden_states",
    "k_steps",
    "phase_features",
    "phase_scaling",
    "phase_step",
    "phase_unit_cost",
    "run_phase_unit",
]

#: The two diagrams: "depth" (exponents of L at fixed M, D) and "dim" (exponents of D at fixed L, M).
DIAGRAMS: tuple[str, ...] = ("depth", "dim")
#: Names of a point's two coordinates in each diagram.
AXES: dict[str, tuple[str, str]] = {"depth": ("beta", "gamma"), "dim": ("delta", "lr_exponent")}

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
    """
    return residual_stack(h0, u, v, multiplier=scaling.multiplier, pre_scale=scaling.pre_scale,
                          activation=activation, backend=backend)


def _readout(h: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """f = W_Uᵀ h / D, the convention of :class:`deepres.DeepResNet`."""
    return h @ readout / readout.shape[0]


def _losses(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """½·mean over samples of ‖f − y‖², per replica: (R,)."""
    return 0.5 * (f - y).pow(2).sum(-1).mean(-1)


def _bad(f: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
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
        f = _readout(phase_features(h0, *leaves, scaling, activation=activation, backend=backend), readout)
        losses = _losses(f, y)
        keep = ~_bad(f, losses) if frozen is None else ~_bad(f, losses) & ~frozen
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
    """The input h_{l−1} of every block l, (R, L, N, D) (plain per-layer loop, no gradient)."""
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
    still composed (the model of :class:`deepres.study.lazy.BlockLinearizedNet`, here
    for the family's scales). Plain autograd, differentiable in u and v.

    Args:
        h0: (R, N, D). u0, v0: the initial weights, (R, L, M, D). u, v: the current ones.
        scaling: the point's scales. activation: Default ``"tanh"``.

    Returns:
        (R, N, D).
    """
    c, a = scaling.multiplier, scaling.pre_scale
    h = h0
    for u0_l, v0_l, u_l, v_l in zip(u0.unbind(1), v0.unbind(1), u.unbind(1), v.unbind(1), strict=True):
        s, ds = activation_and_derivative(activation, a * (h @ u0_l.transpose(-1, -2)))
        tangent = ds * (a * (h @ (u_l - u0_l).transpose(-1, -2)))
        h = h + c * (s @ v_l + tangent @ v0_l)
    return h


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

    Args and returns: as :func:`block_linearized_features`, with ``backend`` as
    :func:`phase_features` (float64 is advised: the cancellation error is 10⁻⁴ in float32).
    """
    # NOTE: the plain per-layer autograd model took 1.2–1.3 s for a forward and backward at
    # L = 256, R = 64, M = D = 4 on the 2-core CPU (load 6), this one 0.6–0.9 s, the network 0.6 s;
    # the two agreed to 2·10⁻¹⁰ (relative to the change of h) and gradients to 4·10⁻¹⁰.
    step = u - u0
    weights_in = torch.cat([u0, u0 + _FD_STEP * step, u0 - _FD_STEP * step], 2)
    weights_out = torch.cat([v, v0 / (2 * _FD_STEP), v0 / (-2 * _FD_STEP)], 2)
    return phase_features(h0, weights_in, weights_out, scaling, activation=activation, backend=backend)


def _rms(t: torch.Tensor) -> torch.Tensor:
    """RMS over every axis but the first (the replica): (R,)."""
    return t.pow(2).flatten(1).mean(1).sqrt()


def first_step(x: torch.Tensor, y: torch.Tensor, embed: torch.Tensor, readout: torch.Tensor,
               u0: torch.Tensor, v0: torch.Tensor, scaling: PhaseScaling, *, eta: float,
               activation: str = "tanh", backend: str = "torch", tolerance: float = 0.05,
               max_halvings: int = 30) -> dict[str, Any]:
    """The first gradient step, in its linear regime, and the initial fluctuation.

    The gradient g at initialization is computed once; the output after the step
    θ_0 − η·lr·g is evaluated at η, η/2, η/4, ... and the largest η is used from
    which two successive halvings each halve the mean (over replicas) output change
    within ``tolerance`` and at which the change per η is within ``tolerance`` of the
    exact linear response J·(−lr·g) (forward mode). Weight movements are exactly
    linear in η. Every movement is reported per unit η.

    Args:
        x: (N, d_in). y: (N, d_out). embed: (D, d_in). readout: (D, d_out).
        u0, v0: (R, L, M, D), not modified. scaling: the point's scales.
        eta: the first η tried. activation, backend: as :func:`phase_features`.
        tolerance: allowed |ratio/2 − 1|. Default 0.05. max_halvings: Default 30.

    Returns:
        Per replica (R,): ``output_step`` RMS(f(η) − f_0)/η; ``weight_step_u``,
        ``weight_step_v``, ``weight_step`` ‖Δw‖/‖w_0‖/η for u, v and both;
        ``preact_step`` RMS over blocks, units, samples of a·Δu_{l,j}ᵀh_{l−1}
        relative to the RMS of a·u0_{l,j}ᵀh_{l−1}, per unit η (the unit's own
        pre-activation change); ``init_fluct_h`` RMS(h_L − h_0) and
        ``init_fluct_f`` RMS(f_0 − W_Uᵀh_0/D) at initialization; ``loss0``;
        ``linear_response`` RMS(J·Δθ)/η. Scalars: ``eta`` (used), ``linearity_ratio`` (of the
        two ratios, change at η over change at η/2 and at η/2 over η/4, the one farther
        from 2), ``jvp_gap`` |mean change per η / mean linear response − 1|, ``halvings``.
    """
    replicas = u0.shape[0]
    h0 = (x @ embed.T).unsqueeze(0).expand(replicas, -1, -1)
    leaves = [u0.detach().clone().requires_grad_(), v0.detach().clone().requires_grad_()]
    with torch.enable_grad():
        h_last = phase_features(h0, *leaves, scaling, activation=activation, backend=backend)
        f0 = _readout(h_last, readout)
        loss0 = _losses(f0, y)
        grad_u, grad_v = torch.autograd.grad(loss0.sum(), leaves)
    f0, h_last = f0.detach(), h_last.detach()
    step_u, step_v = -scaling.lr_multiplier * grad_u, -scaling.lr_multiplier * grad_v  # Δw per unit η

    def moved(step: float) -> torch.Tensor:
        with torch.no_grad():
            h = phase_features(h0, u0 + step * step_u, v0 + step * step_v, scaling, activation=activation,
                               backend=backend)
            return _rms(_readout(h, readout) - f0)

    # The exact linear response J·Δθ per unit η, by forward mode (the plain per-layer engine: the
    # fused ones have no forward-mode rule). It guards the halving test, which can pass far from
    # the linear regime: at η = 50 on a 16-layer network at (1, 1.25) two successive halvings
    # each halved the change (ratios 2.07 and 2.05) while the change per η was 6× below J·Δθ.
    _, tangent = torch.func.jvp(
        lambda uu, vv: _readout(phase_features(h0, uu, vv, scaling, activation=activation,
                                               backend="reference"), readout), (u0, v0), (step_u, step_v))
    linear = _rms(tangent)
    changes = [moved(eta), moved(eta / 2), moved(eta / 4)]

    def ratios() -> list[float]:
        return [float(a.mean() / b.mean()) for a, b in itertools.pairwise(changes)]

    def gap() -> float:
        return abs(float(changes[0].mean() / eta / linear.mean()) - 1)

    def linear_enough() -> bool:
        return max(abs(r / 2 - 1) for r in ratios()) <= tolerance and gap() <= tolerance

    halvings = 0
    while not linear_enough() and halvings < max_halvings:
        eta = eta / 2
        changes = [*changes[1:], moved(eta / 4)]
        halvings += 1
    current = changes[0]
    ratio = max(ratios(), key=lambda r: abs(r / 2 - 1))
    states = hidden_states(h0, u0, v0, scaling, activation=activation)  # (R, L, N, D)
    z0 = torch.einsum("rlnd,rlmd->rlnm", states, u0)
    dz = torch.einsum("rlnd,rlmd->rlnm", states, step_u)  # a cancels in the ratio
    norm = lambda t: t.flatten(1).norm(dim=1)
    return {
        "output_step": current / eta,
        "weight_step_u": norm(step_u) / norm(u0),
        "weight_step_v": norm(step_v) / norm(v0),
        "weight_step": torch.cat([step_u.flatten(1), step_v.flatten(1)], 1).norm(dim=1)
        / torch.cat([u0.flatten(1), v0.flatten(1)], 1).norm(dim=1),
        "preact_step": _rms(dz) / _rms(z0),
        "init_fluct_h": _rms(h_last - h0),
        "init_fluct_f": _rms(f0 - _readout(h0, readout)),
        "loss0": loss0.detach(),
        "linear_response": linear,
        "eta": eta,
        "linearity_ratio": ratio,
        "jvp_gap": gap(),
        "halvings": halvings,
    }


def _descend(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], u: torch.Tensor,
             v: torch.Tensor, y: torch.Tensor, *, lr: float, steps: int,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K full-batch GD steps of ``forward(u, v) → f`` (R, N, d_out), in place on u, v.

    A replica whose loss or output becomes non-finite is frozen from that step on
    (its gradient dropped, as :func:`deepres.train` does).

    Returns:
        (f_K (R, N, d_out), losses (K+1, R), nonfinite (R,) bool).
    """
    losses = []
    frozen = torch.zeros(u.shape[0], dtype=torch.bool, device=u.device)
    for step in range(steps + 1):
        leaves = [u.detach().requires_grad_(), v.detach().requires_grad_()]
        with torch.set_grad_enabled(step < steps):
            f = forward(*leaves)
            loss = _losses(f, y)
        frozen |= _bad(f, loss)
        losses.append(loss.detach())
        if step == steps or bool(frozen.all()):
            continue
        total = torch.where(frozen, torch.zeros_like(loss), loss).sum()
        grads = torch.autograd.grad(total, leaves)
        with torch.no_grad():
            for weight, grad in zip((u, v), grads, strict=True):
                grad[frozen] = 0.0
                weight.sub_(grad, alpha=lr)
    return f.detach(), torch.stack(losses), frozen


def k_steps(x: torch.Tensor, y: torch.Tensor, embed: torch.Tensor, readout: torch.Tensor,
            u0: torch.Tensor, v0: torch.Tensor, scaling: PhaseScaling, *, eta: float, steps: int,
            activation: str = "tanh", backend: str = "torch") -> dict[str, torch.Tensor]:
    """K steps of the network and of its block-linearized (lazy-ODE) model from the same weights.

    The model is :func:`block_linearized_stack` (the fused stack; a central difference).

    Args:
        x, y, embed, readout, u0, v0, scaling, activation, backend: as :func:`first_step`.
        eta: base learning rate η. steps: K.

    Returns:
        Per replica (R,): ``output_move`` RMS(f_K − f_0); ``weight_move`` ‖θ_K − θ_0‖/‖θ_0‖
        over u and v; ``loss_decrease`` (loss_0 − loss_K)/loss_0; ``nonlinearity``
        RMS(f_K − f_lin,K)/RMS(f_K − f_0) with f_lin the block-linearized model;
        ``diverged`` and ``diverged_lin`` (bool): non-finite, or a final loss above the
        initial one, for the network and for the model; ``nonfinite`` and ``nonfinite_lin``
        (bool). ``losses`` (K+1, R) of the network.
    """
    replicas = u0.shape[0]
    h0 = (x @ embed.T).unsqueeze(0).expand(replicas, -1, -1)
    lr = eta * scaling.lr_multiplier

    def network(uu: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
        return _readout(phase_features(h0, uu, vv, scaling, activation=activation, backend=backend), readout)

    def linearized(uu: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
        return _readout(block_linearized_stack(h0, u0, v0, uu, vv, scaling, activation=activation,
                                               backend=backend), readout)

    u, v = u0.clone(), v0.clone()
    f_k, losses, bad = _descend(network, u, v, y, lr=lr, steps=steps)
    f_lin, losses_lin, bad_lin = _descend(linearized, u0.clone(), v0.clone(), y, lr=lr, steps=steps)
    with torch.no_grad():
        f0 = _readout(phase_features(h0, u0, v0, scaling, activation=activation, backend=backend), readout)
    theta0 = torch.cat([u0.flatten(1), v0.flatten(1)], 1)
    theta = torch.cat([u.flatten(1), v.flatten(1)], 1)
    move = _rms(f_k - f0)
    return {
        "output_move": move,
        "weight_move": (theta - theta0).norm(dim=1) / theta0.norm(dim=1),
        "loss_decrease": (losses[0] - losses[-1]) / losses[0],
        # A replica whose output did not move at all has no defined ratio: NaN, left out.
        "nonlinearity": _rms(f_k - f_lin) / torch.where(move > 0, move, torch.full_like(move, math.nan)),
        "diverged": bad | ~(losses[-1] <= losses[0]),
        "nonfinite": bad,
        "nonfinite_lin": bad_lin,
        "diverged_lin": bad_lin | ~(losses_lin[-1] <= losses_lin[0]),
        "losses": losses,
    }


def phase_unit_cost(unit: dict[str, Any]) -> float:
    """Rough relative cost of a unit, for the progress bar: layer passes × (1 + work per layer)."""
    # NOTE: the first step is one backward and about five forwards; each of the K steps trains the
    # network and its block-linearized model. A layer's fixed overhead costs about as much as
    # 7·10⁴ multiply-adds: measured on the 2-core CPU (load 2.5), the (1, 1) unit at L = 256
    # (R·M·N·D = 10⁴, 10 steps) took 4.9 s and the (1/2, 0) unit at D = 256 (L = 64,
    # R·M·N·D = 1.3·10⁶, first step only) 3.8 s.
    passes = 6 + 3 * unit["steps"]
    work = unit["replicas"] * unit["hidden"] * unit["samples"] * unit["dim"]
    return passes * unit["depth"] * (1 + work / 7e4)


def run_phase_unit(unit: dict[str, Any], *, device: torch.device | str | None = None,
                   backend: str = "torch") -> dict[str, Any]:
    """Run one unit of the phase study: R replicas at one (diagram, point, L, M, D).

    The task, embedding and readout are those of ``deepres study`` for (seed, D);
    the weights are drawn from a seed that does not depend on the point, so every
    point of a diagram starts from the same standardized weights (common random
    numbers: the differences between points are not replica noise).

    Args:
        unit: dict with ``diagram``, ``point``, ``depth``, ``hidden``, ``dim``, ``alpha``,
            ``replicas``, ``first_eta``, ``eta``, ``steps``, ``seed``, ``task``, ``samples``,
            ``activation``, ``dtype``, ``linearity_tolerance``, ``max_halvings``.
        device: Default CPU. backend: stack backend. Default ``"torch"``.

    Returns:
        The results of :func:`first_step` and (when ``steps`` > 0) of :func:`k_steps`,
        CPU tensors, with ``seconds``.
    """
    start = time.perf_counter()
    dtype = _DTYPES[unit["dtype"]]
    task = make_task(unit["task"], unit["seed"], samples=unit["samples"], dtype=dtype, device=device)
    embed, readout = coupling_weights(task.in_features, task.out_features, unit["dim"],
                                      derived_seed("coupling", unit["seed"], unit["dim"]),
                                      dtype=dtype, device=device)
    scaling = phase_scaling(unit["diagram"], unit["point"], depth=unit["depth"], hidden=unit["hidden"],
                            dim=unit["dim"], alpha=unit["alpha"])
    shape = (unit["replicas"], unit["depth"], unit["hidden"], unit["dim"])
    gen = torch.Generator().manual_seed(derived_seed("phase-weights", unit["diagram"], unit["seed"],
                                                     *shape))
    # Drawn in float64 on the CPU, then converted: the same draws for every dtype and device.
    u0 = (scaling.init_std * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device, dtype)
    v0 = (scaling.init_std * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device, dtype)
    first = first_step(task.x, task.y, embed, readout, u0, v0, scaling, eta=unit["first_eta"],
                       activation=unit["activation"], backend=backend,
                       tolerance=unit["linearity_tolerance"], max_halvings=unit["max_halvings"])
    later = {} if unit["steps"] == 0 else k_steps(task.x, task.y, embed, readout, u0, v0, scaling,
                                                   eta=unit["eta"], steps=unit["steps"],
                                                   activation=unit["activation"], backend=backend)
    out = {k: (t.detach().cpu() if isinstance(t, torch.Tensor) else t) for k, t in (first | later).items()}
    out["seconds"] = time.perf_counter() - start
    return out
