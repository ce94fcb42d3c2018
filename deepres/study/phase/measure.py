"""What one unit of the phase study measures: the first gradient step and K steps.

A unit is one (diagram, point, L, M, D) of :mod:`deepres.study.phase.family`'s family:
R replicas trained side by side on the study's task with the embedding and
readout of ``deepres study`` (:func:`run_phase_unit`). It measures, per replica,

* the first gradient step (:func:`first_step`), at a base learning rate halved
  until the output change is linear in it (checked against the exact linear
  response), and the fluctuation at initialization;
* K steps (:func:`k_steps`): output movement, weight movement, loss decrease,
  distance to the block-linearized model, diverged and non-finite replicas.

:mod:`deepres.study.phase.analysis` fits the exponents and classifies the points.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from deepres.study.phase.family import (
    PhaseScaling,
    block_linearized_stack,
    hidden_states,
    nonfinite_replicas,
    phase_features,
    phase_readout,
    phase_scaling,
    replica_losses,
)
from deepres.study.shared.data import unit_task
from deepres.study.shared.measures import replica_rms
from deepres.study.shared.sweep import derived_seed

__all__ = ["first_step", "k_steps", "phase_result_schema", "phase_unit_bytes", "phase_unit_cost",
           "run_phase_unit"]

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
        f0 = phase_readout(h_last, readout)
        loss0 = replica_losses(f0, y)
        grad_u, grad_v = torch.autograd.grad(loss0.sum(), leaves)
    f0, h_last = f0.detach(), h_last.detach()
    step_u, step_v = -scaling.lr_multiplier * grad_u, -scaling.lr_multiplier * grad_v  # Δw per unit η

    def moved(step: float) -> torch.Tensor:
        with torch.no_grad():
            h = phase_features(h0, u0 + step * step_u, v0 + step * step_v, scaling, activation=activation,
                               backend=backend)
            return replica_rms(phase_readout(h, readout) - f0)

    # The exact linear response J·Δθ per unit η, by forward mode (the engine's fused jvp). It guards
    # the halving test, which can pass far from the linear regime: at η = 50 on a 16-layer network
    # at (1, 1.25) two successive halvings each halved the change (ratios 2.07 and 2.05) while the
    # change per η was 6× below J·Δθ.
    _, tangent = torch.func.jvp(
        lambda uu, vv: phase_readout(phase_features(h0, uu, vv, scaling, activation=activation,
                                               backend=backend), readout), (u0, v0), (step_u, step_v))
    linear = replica_rms(tangent)
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
        "preact_step": replica_rms(dz) / replica_rms(z0),
        "init_fluct_h": replica_rms(h_last - h0),
        "init_fluct_f": replica_rms(f0 - phase_readout(h0, readout)),
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
            loss = replica_losses(f, y)
        frozen |= nonfinite_replicas(f, loss)
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
        h = phase_features(h0, uu, vv, scaling, activation=activation, backend=backend)
        return phase_readout(h, readout)

    def linearized(uu: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
        return phase_readout(block_linearized_stack(h0, u0, v0, uu, vv, scaling, activation=activation,
                                               backend=backend), readout)

    u, v = u0.clone(), v0.clone()
    f_k, losses, bad = _descend(network, u, v, y, lr=lr, steps=steps)
    f_lin, losses_lin, bad_lin = _descend(linearized, u0.clone(), v0.clone(), y, lr=lr, steps=steps)
    with torch.no_grad():
        f0 = network(u0, v0)
    theta0 = torch.cat([u0.flatten(1), v0.flatten(1)], 1)
    theta = torch.cat([u.flatten(1), v.flatten(1)], 1)
    move = replica_rms(f_k - f0)
    return {
        "output_move": move,
        "weight_move": (theta - theta0).norm(dim=1) / theta0.norm(dim=1),
        "loss_decrease": (losses[0] - losses[-1]) / losses[0],
        # A replica whose output did not move at all has no defined ratio: NaN, left out.
        "nonlinearity": (replica_rms(f_k - f_lin)
                         / torch.where(move > 0, move, torch.full_like(move, math.nan))),
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
    x, y, embed, readout = unit_task(unit, device)
    dtype = x.dtype
    scaling = phase_scaling(unit["diagram"], unit["point"], depth=unit["depth"], hidden=unit["hidden"],
                            dim=unit["dim"], alpha=unit["alpha"])
    shape = (unit["replicas"], unit["depth"], unit["hidden"], unit["dim"])
    gen = torch.Generator().manual_seed(derived_seed("phase-weights", unit["diagram"], unit["seed"],
                                                     *shape))
    # Drawn in float64 on the CPU, then converted: the same draws for every dtype and device.
    u0 = (scaling.init_std * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device, dtype)
    v0 = (scaling.init_std * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device, dtype)
    first = first_step(x, y, embed, readout, u0, v0, scaling, eta=unit["first_eta"],
                       activation=unit["activation"], backend=backend,
                       tolerance=unit["linearity_tolerance"], max_halvings=unit["max_halvings"])
    later = {} if unit["steps"] == 0 else k_steps(x, y, embed, readout, u0, v0, scaling,
                                                   eta=unit["eta"], steps=unit["steps"],
                                                   activation=unit["activation"], backend=backend)
    out = {k: (t.detach().cpu() if isinstance(t, torch.Tensor) else t) for k, t in (first | later).items()}
    out["seconds"] = time.perf_counter() - start
    return out


def phase_result_schema(unit: dict[str, Any]) -> dict[str, Any]:
    """What :func:`run_phase_unit` returns for ``unit``: each entry's shape (a
    :data:`deepres.study.shared.store.Schema`), checked when a stored result is read back.

    Example:
        >>> phase_result_schema({"replicas": 8, "steps": 0})["output_step"]
        (8,)
    """
    replicas = (unit["replicas"],)
    schema: dict[str, Any] = {name: replicas for name in (
        "output_step", "weight_step_u", "weight_step_v", "weight_step", "preact_step", "init_fluct_h",
        "init_fluct_f", "loss0", "linear_response")}
    schema |= {name: "number" for name in ("eta", "linearity_ratio", "jvp_gap", "halvings", "seconds")}
    if unit["steps"] > 0:
        schema |= {name: replicas for name in ("output_move", "weight_move", "loss_decrease", "nonlinearity",
                                               "diverged", "nonfinite", "nonfinite_lin", "diverged_lin")}
        schema["losses"] = (unit["steps"] + 1, unit["replicas"])
    return schema


def phase_unit_bytes(unit: dict[str, Any]) -> float:
    """An upper estimate of a phase unit's peak memory in bytes, from its sizes (for
    :func:`deepres.study.shared.memory.check_unit_memory`): twelve copies of its R·L·M·D
    weights (u₀, v₀, the steps, the halvings' trial weights, gradients) and four of its
    R·L·N·(D + M) hidden states and pre-activations.

    Example:
        >>> unit = {"dtype": "float64", "replicas": 64, "depth": 256, "hidden": 4, "dim": 4, "samples": 10}
        >>> phase_unit_bytes(unit) < 1e9
        True
    """
    itemsize = 4 if unit["dtype"] == "float32" else 8
    weights = unit["replicas"] * unit["depth"] * unit["hidden"] * unit["dim"]
    states = unit["replicas"] * unit["depth"] * unit["samples"] * (unit["dim"] + unit["hidden"])
    return float(itemsize * (12 * weights + 4 * states))
