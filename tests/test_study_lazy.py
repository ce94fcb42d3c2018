"""The lazy sweep: common random numbers across α, the α-free lazy ODE and tangent model, d_∞ as
the α → ∞ limit of the linearization distance, and the 1/α² decay of the lazy-ODE distance."""

from __future__ import annotations

import math

import torch

from deepres.study.convergence.compare import build_resnet
from deepres.study.convergence.lazy import (
    BlockLinearizedNet,
    lazy_limit,
    lazy_measurements,
    linearized_training,
    tangent_training,
)
from deepres.study.convergence.presets import StudyConfig
from deepres.study.convergence.units import lazy_weight_seed
from deepres.study.shared.data import coupling_weights
from deepres.training import train

SHAPE = {"depth": 3, "hidden": 2, "replicas": 3}


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    embed, readout = coupling_weights(3, 2, 4, seed=seed + 1, dtype=torch.float64)
    return x, y, embed, readout


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_every_alpha_of_a_sweep_and_its_limit_start_from_the_same_weights():
    config = StudyConfig(lazy_alphas=[1.0, 8.0, 64.0])
    units = config.lazy_units()
    (limit,) = config.lazy_limit_units()
    seeds = {lazy_weight_seed(u) for u in units} | {lazy_weight_seed(limit)}
    assert len(seeds) == 1 and all(u["shared_weights"] for u in units)
    assert "alpha" not in limit and limit["kind"] == "lazy_limit"
    # The initial draw itself does not depend on α.
    _, _, embed, readout = _problem()
    nets = [build_resnet(embed, readout, alpha=a, paired_units=True, seed=7, **SHAPE) for a in (1.0, 50.0)]
    assert torch.equal(nets[0].stack.u, nets[1].stack.u) and torch.equal(nets[0].stack.v, nets[1].stack.v)
    # Other sweeps (another D) draw other weights.
    other = StudyConfig(lazy_alphas=[1.0], dims=[8]).lazy_units()[0]
    assert lazy_weight_seed(other) not in seeds


def test_lazy_ode_and_tangent_model_do_not_depend_on_alpha():
    """In δ = α(θ − θ₀) both trained models are α-free: their outputs after K steps agree across α."""
    x, y, embed, readout = _problem()
    ode, lin = [], []
    for alpha in (1.0, 3.0, 40.0):
        net = build_resnet(embed, readout, alpha=alpha, paired_units=True, seed=5, **SHAPE)
        lin.append(linearized_training(net, x, y, steps=4, eta=0.2))
        ode.append(train(BlockLinearizedNet(net), x, y, steps=4, eta=0.2, record_features=False).outputs)
    f0 = x @ embed.T @ readout / embed.shape[0]  # paired units: the identity map at init
    for out in (ode, lin):
        moved = out[0] - f0
        assert moved.norm() > 1e-2
        assert all(float((o - out[0]).norm() / moved.norm()) < 1e-10 for o in out[1:])


def test_network_linearization_is_the_lazy_odes_tangent_model():
    """The network and its lazy ODE share their first derivative at θ₀: same tangent training."""
    x, y, embed, readout = _problem(2)
    net = build_resnet(embed, readout, alpha=2.0, paired_units=True, seed=3, **SHAPE)
    lazy = BlockLinearizedNet(net)
    by_net = linearized_training(net, x, y, steps=3, eta=0.3)

    def forward(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return lazy.readout(lazy.features_at(x, u, v))

    by_ode = tangent_training(forward, lazy.u0, lazy.v0, y, steps=3, eta=0.3, lr_multiplier=lazy.lr_multiplier)
    assert _rel(by_ode, by_net) < 1e-12


def test_linearization_distance_tends_to_d_inf_and_lazy_ode_distance_decays_like_alpha_squared():
    x, y, embed, readout = _problem(4)
    options = {"eta": 0.2, "steps": 4, "seed": 11, **SHAPE}
    limit = lazy_limit(x, y, embed, readout, **options)
    d_inf = limit["d_inf"]
    assert bool((d_inf > 1e-3).all()) and not bool(limit["nonfinite"].any())
    far = [lazy_measurements(x, y, embed, readout, alpha=a, **options) for a in (200.0, 400.0)]
    for out in far:
        assert float((out["linearization_distance"] - d_inf).abs().max()) < 1e-3
    # 1/α²: the paired units cancel the second-order terms.
    slope = math.log(float(far[1]["lazy_ode_distance"].mean() / far[0]["lazy_ode_distance"].mean())) / math.log(2)
    assert -2.1 < slope < -1.9
    # Weight movement ∝ 1/α.
    ratio = float(far[0]["weight_movement"].mean() / far[1]["weight_movement"].mean())
    assert abs(ratio - 2) < 0.01
