"""Coupled comparison of trained ResNets with their trained mean-ODE limit.

Coupling: every ResNet of a comparison and the limit see the same data (x, y)
and the same fixed embedding W_E and readout W_U; the ResNets' u, v are drawn
i.i.d. from the initial law μ_0 (one draw per replica), the limit's particles
are drawn from the same μ_0 (antithetic pairs). Both are trained by the same
gradient-descent loop (:func:`deepres.train`) with the same η and number
of steps, each with its own lr multiplier.

Error decomposition at a recorded step, for R replicas F_r (N, d) of the ResNet
output and the limit's output f (N, d); every RMS is over samples and outputs:

* ``rms``         = √(mean_r mean_{n,i} (F_r − f)²), the error of one network;
* ``bias``        = RMS of (mean_r F_r − f), the systematic part;
* ``bias_se``     = RMS standard error of mean_r F_r (its noise floor; computed
  over independent units: replicas, or antithetic pairs with ``antithetic``);
* ``bias_debiased`` = √max(bias² − bias_se², 0), an unbiased-in-square estimate
  of the bias with the replica noise removed;
* ``fluctuation`` = √(mean_{n,i} Var_r F_r) with the unbiased variance over
  replicas, the spread of one network around the replica mean.

rms² = bias² + (R−1)/R·fluctuation² exactly. The same is reported for the
final embedding h_L against h(1). Replicas flagged non-finite by the trainer are
excluded (with their antithetic partner) and counted.
"""

from __future__ import annotations

import math

import torch

from deepres._checks import check_choice
from deepres.meanode import SOLVERS, MeanODENet
from deepres.modules import DeepResNet
from deepres.training import TrainResult, train

__all__ = [
    "SOLVERS",  # re-exported from deepres.meanode: the solvers the limit accepts
    "build_limit",
    "build_limit_sets",
    "build_resnet",
    "decompose",
    "rms",
    "run_limit",
    "run_resnet",
]

def _set_shared(net: DeepResNet, embed: torch.Tensor, readout: torch.Tensor) -> None:
    with torch.no_grad():
        net.embed_weight.copy_(embed)
        net.readout_weight.copy_(readout)


def build_resnet(embed: torch.Tensor, readout: torch.Tensor, *, depth: int, hidden: int, replicas: int,
                 alpha: float = 1.0, activation: str = "tanh", antithetic: bool = False,
                 paired_units: bool = False, backend: str = "auto", seed: int = 0) -> DeepResNet:
    """R independent ResNets with the shared W_E (D, d_in), W_U (D, d_out).

    Args:
        embed, readout: the shared weights (their dtype and device are used).
        depth: L. hidden: M. replicas: R (even with ``antithetic``).
        alpha: α. Default 1.0. activation: Default ``"tanh"``.
        antithetic: replicas 2i and 2i+1 get (u, v) and (u, −v). Default False.
        paired_units: inside every block, units j and j + M/2 get (u, v) and (u, −v)
            (M even), so that the network is exactly the identity map at
            initialization whatever α (used by the lazy-regime sweep). Default False.
        backend: stack backend. Default ``"auto"``. seed: seed of u, v. Default 0.

    Returns:
        A :class:`deepres.DeepResNet` with ``replicas=R`` (u, v of shape (R, L, M, D)).
    """
    if antithetic and replicas % 2:
        raise ValueError(f"replicas must be even with antithetic pairs; got {replicas}")
    if paired_units and hidden % 2:
        raise ValueError(f"hidden must be even with paired_units; got {hidden}")
    dim, d_in = embed.shape
    net = DeepResNet(d_in, readout.shape[1], depth, dim, hidden, alpha=alpha, activation=activation,
                     backend=backend, replicas=replicas, dtype=embed.dtype, device=embed.device,
                     generator=torch.Generator(device=embed.device).manual_seed(seed))
    _set_shared(net, embed, readout)
    if antithetic:
        with torch.no_grad():
            net.stack.u[1::2] = net.stack.u[0::2]
            net.stack.v[1::2] = -net.stack.v[0::2]
    if paired_units:
        half = hidden // 2
        with torch.no_grad():
            net.stack.u[..., half:, :] = net.stack.u[..., :half, :]
            net.stack.v[..., half:, :] = -net.stack.v[..., :half, :]
    return net


def build_limit(embed: torch.Tensor, readout: torch.Tensor, *, particles: int, grid_steps: int,
                alpha: float = 1.0, activation: str = "tanh", solver: str = "rk4", seed: int = 0,
                particle_init: str = "antithetic") -> MeanODENet:
    """The mean-ODE limit sharing W_E, W_U, with K particles and an N-step grid.

    A :class:`deepres.meanode.MeanODENet` (ODE-adjoint gradient) whose embedding and
    readout are the given tensors (shared, not copied).

    Args:
        embed, readout: the shared W_E (D, d_in), W_U (D, d_out).
        particles: K (even). grid_steps: N.
        alpha: α. Default 1.0. activation: Default ``"tanh"``.
        solver: ``"euler"``, ``"midpoint"``, ``"rk4"`` (default).
        seed: seed of the particles. Default 0.
        particle_init: ``"antithetic"`` (default) or ``"sobol"`` (scrambled Sobol points
            in antithetic pairs), see ``deepres.meanode.init_particles``.

    Returns:
        The MeanODENet: ``forward(x)`` (N, d_out), ``features(x)`` (N, D), ``lr_multiplier``.

    Example:
        >>> from deepres.study.shared.data import coupling_weights
        >>> we, wu = coupling_weights(5, 5, 4, seed=0)
        >>> limit = build_limit(we, wu, particles=8, grid_steps=4)
        >>> limit(torch.randn(3, 5)).shape, limit.embed_weight is we
        (torch.Size([3, 5]), True)
    """
    check_choice(solver, "solver", SOLVERS)
    if particles % 2:
        raise ValueError(f"particles must be even (antithetic pairs); got {particles}")
    dim, d_in = embed.shape
    gen = torch.Generator(device=embed.device).manual_seed(seed)
    return MeanODENet(d_in, readout.shape[1], dim, particles, grid_steps, embed_weight=embed,
                      readout_weight=readout, alpha=alpha, activation=activation, solver=solver,
                      particle_init=particle_init, device=embed.device, dtype=embed.dtype, generator=gen)


def rms(t: torch.Tensor) -> float:
    """Root mean square of all entries, as a Python float."""
    return float(t.double().pow(2).mean().sqrt().item())


def decompose(values: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor | None = None,
              antithetic: bool = False) -> dict[str, float]:
    """Split the error of R replicas to a target into bias and fluctuation.

    Args:
        values: the replicas' outputs (or embeddings), (R, N, d).
        target: the limit's, (N, d).
        valid: bool mask (R,) of the replicas to use. Default: all. With
            ``antithetic``, a pair is used only when both members are valid.
        antithetic: replicas 2i and 2i+1 are antithetic partners: the noise floor
            of the mean is computed from the pair means. Default False.

    Returns:
        dict with ``rms``, ``bias``, ``bias_se``, ``bias_debiased``, ``fluctuation``
        (see the module docstring) and ``replicas`` (how many were used; NaN
        values when fewer than 2).

    Example:
        >>> f = torch.zeros(3, 2)
        >>> d = decompose(torch.stack([f + 1, f - 1]), f)
        >>> d["bias"], d["fluctuation"], d["rms"]
        (0.0, 1.4142135623730951, 1.0)
    """
    if values.dim() != 3 or target.shape != values.shape[1:]:
        raise ValueError(f"values must be (R, N, d) and target (N, d) with matching (N, d); "
                         f"got {tuple(values.shape)} and {tuple(target.shape)}")
    replicas = values.shape[0]
    ok = torch.ones(replicas, dtype=torch.bool, device=values.device) if valid is None else valid.clone()
    if antithetic:
        if replicas % 2:
            raise ValueError(f"antithetic needs an even number of replicas; got {replicas}")
        pair_ok = ok[0::2] & ok[1::2]
        ok = pair_ok.repeat_interleave(2)
    vals = values[ok].double()
    tgt = target.double()
    used = int(vals.shape[0])
    nan = float("nan")
    if used < 2:
        return {"rms": nan, "bias": nan, "bias_se": nan, "bias_debiased": nan, "fluctuation": nan,
                "replicas": used}
    mean = vals.mean(0)
    # The noise floor of the mean comes from independent units: antithetic pair means, or replicas.
    units = (vals[0::2] + vals[1::2]) / 2 if antithetic else vals
    count = units.shape[0]
    se2 = units.var(0, unbiased=True).mean().item() / count if count > 1 else nan
    bias = rms(mean - tgt)
    return {
        "rms": rms(vals - tgt),
        "bias": bias,
        "bias_se": math.sqrt(se2),
        "bias_debiased": math.sqrt(max(bias**2 - se2, 0.0)),
        "fluctuation": math.sqrt(vals.var(0, unbiased=True).mean().item()),
        "replicas": used,
    }


def run_resnet(task_x: torch.Tensor, task_y: torch.Tensor, embed: torch.Tensor, readout: torch.Tensor, *,
               depth: int, hidden: int, replicas: int, alpha: float, eta: float, steps: int,
               record_steps: list[int], activation: str = "tanh", antithetic: bool = False,
               backend: str = "auto", seed: int = 0) -> TrainResult:
    """Build and train R coupled ResNets (:func:`build_resnet`), recording f and h_L."""
    net = build_resnet(embed, readout, depth=depth, hidden=hidden, replicas=replicas, alpha=alpha,
                       activation=activation, antithetic=antithetic, backend=backend, seed=seed)
    return train(net, task_x, task_y, steps=steps, eta=eta, record_steps=record_steps)


def run_limit(task_x: torch.Tensor, task_y: torch.Tensor, embed: torch.Tensor, readout: torch.Tensor, *,
              particles: int, grid_steps: int, alpha: float, eta: float, steps: int,
              record_steps: list[int], activation: str = "tanh", solver: str = "rk4", seed: int = 0,
              ) -> TrainResult:
    """Build and train the coupled limit (:func:`build_limit`), recording f and h(1)."""
    net = build_limit(embed, readout, particles=particles, grid_steps=grid_steps, alpha=alpha,
                      activation=activation, solver=solver, seed=seed)
    return train(net, task_x, task_y, steps=steps, eta=eta, record_steps=record_steps)


def build_limit_sets(embed: torch.Tensor, readout: torch.Tensor, *, particles: int, grid_steps: int,
                     sets: int, alpha: float = 1.0, activation: str = "tanh", solver: str = "rk4",
                     seed: int = 0, particle_init: str = "antithetic") -> list[MeanODENet]:
    """``sets`` independent particle draws of the limit (:func:`build_limit`), one module each.

    Set i draws its particles from ``seed + 7919·i``.
    """
    return [build_limit(embed, readout, particles=particles, grid_steps=grid_steps, alpha=alpha,
                        activation=activation, solver=solver, seed=seed + 7919 * i,
                        particle_init=particle_init)
            for i in range(sets)]
