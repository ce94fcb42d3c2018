"""Coupled comparison: the error decomposition on cases with known answers, the coupling,
antithetic replicas, and the limit built on the shared embedding and readout."""

from __future__ import annotations

import math

import pytest
import torch

from deepres.study.convergence import compare
from deepres.study.convergence.analysis import bootstrap_errors
from deepres.study.convergence.compare import build_limit, build_resnet, coupling_weights, decompose


def test_decompose_known_bias_and_fluctuation():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    noise = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    # Two replicas target + bias ± noise: mean is target + bias, variance (unbiased) 2·noise².
    values = torch.stack([target + bias + noise, target + bias - noise])
    d = decompose(values, target)
    assert math.isclose(d["bias"], compare.rms(bias), rel_tol=1e-12)
    assert math.isclose(d["fluctuation"], math.sqrt(2) * compare.rms(noise), rel_tol=1e-12)
    assert math.isclose(d["rms"] ** 2, compare.rms(bias) ** 2 + compare.rms(noise) ** 2, rel_tol=1e-12)
    assert d["replicas"] == 2


def test_decompose_identity_and_antithetic_noise_floor():
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(10, 4, 2, generator=gen, dtype=torch.float64)
    target = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    d = decompose(values, target)
    r = values.shape[0]
    assert math.isclose(d["rms"] ** 2, d["bias"] ** 2 + (r - 1) / r * d["fluctuation"] ** 2, rel_tol=1e-12)
    assert math.isclose(d["bias_se"], d["fluctuation"] / math.sqrt(r), rel_tol=1e-12)
    # Exact antithetic pairs around the target: the pair means are the target, so the bias
    # and its noise floor vanish although each replica is off.
    pairs = torch.stack([target + values[:5], target - values[:5]], dim=1).flatten(0, 1)
    a = decompose(pairs, target, antithetic=True)
    assert a["bias"] < 1e-15 and a["bias_se"] < 1e-15 and a["fluctuation"] > 0.5
    assert a["bias_debiased"] < 1e-15


def test_decompose_excludes_invalid_replicas_and_their_partners():
    target = torch.zeros(2, 2, dtype=torch.float64)
    values = torch.stack([target + 1, target - 1, target + 3, target + float("nan")])
    valid = torch.tensor([True, True, True, False])
    plain = decompose(values, target, valid=valid)
    assert plain["replicas"] == 3 and math.isclose(plain["bias"], 1.0)
    paired = decompose(values, target, valid=valid, antithetic=True)
    assert paired["replicas"] == 2 and paired["bias"] == 0.0
    with pytest.raises(ValueError, match="values must be"):
        decompose(values[0], target)


def test_bootstrap_errors_center_on_the_estimate():
    gen = torch.Generator().manual_seed(2)
    values = 0.3 + torch.randn(200, 5, 2, generator=gen, dtype=torch.float64)
    target = torch.zeros(5, 2, dtype=torch.float64)
    valid = torch.ones(200, dtype=torch.bool)
    est = decompose(values, target)
    boot = bootstrap_errors(values, target, valid=valid, antithetic=False, draws=300, seed=0)
    assert abs(boot["fluctuation"].mean() / est["fluctuation"] - 1) < 0.02
    assert abs(boot["bias"].mean() / est["bias"] - 1) < 0.05
    # Resampling antithetic pairs keeps them whole: exact pairs around the target have no bias
    # in any draw.
    pairs = torch.stack([target + values[:50], target - values[:50]], dim=1).flatten(0, 1)
    boot = bootstrap_errors(pairs, target, valid=valid[:100], antithetic=True, draws=50, seed=1)
    assert boot["bias"].max() < 1e-15 and boot["fluctuation"].min() > 0.5


def test_coupling_shared_and_antithetic_replicas():
    embed, readout = coupling_weights(5, 3, 6, seed=4, dtype=torch.float64)
    again, _ = coupling_weights(5, 3, 6, seed=4, dtype=torch.float32)
    assert torch.equal(again, embed.float())
    net = build_resnet(embed, readout, depth=3, hidden=2, replicas=4, antithetic=True, seed=1)
    assert torch.equal(net.embed_weight, embed) and torch.equal(net.readout_weight, readout)
    assert torch.equal(net.stack.u[1], net.stack.u[0]) and torch.equal(net.stack.v[1], -net.stack.v[0])
    assert not torch.equal(net.stack.u[2], net.stack.u[0])
    paired = build_resnet(embed, readout, depth=3, hidden=4, replicas=2, paired_units=True, alpha=7.0)
    x = torch.randn(5, 5, dtype=torch.float64)
    # Paired units cancel exactly: the network is the identity map at init, whatever α.
    assert torch.allclose(paired.features(x), paired.embed(x), atol=1e-12)
    with pytest.raises(ValueError, match="even"):
        build_resnet(embed, readout, depth=2, hidden=2, replicas=3, antithetic=True)


def test_limit_is_a_meanode_on_the_shared_weights():
    from deepres.meanode import MeanODENet

    embed, readout = coupling_weights(5, 3, 4, seed=0, dtype=torch.float64)
    sets = compare.build_limit_sets(embed, readout, particles=6, grid_steps=4, sets=2, solver="rk4",
                                    particle_init="sobol", seed=3)
    assert len(sets) == 2 and all(isinstance(net, MeanODENet) for net in sets)
    assert all(net.embed_weight is embed and net.readout_weight is readout for net in sets)
    assert not torch.equal(sets[0].ode.u, sets[1].ode.u)  # independent particle draws
    x = torch.randn(4, 5, dtype=torch.float64)
    # Antithetic particles: zero drift at initialization, h(1) = h(0).
    assert torch.allclose(sets[0].features(x), x @ embed.T, atol=1e-12)
    with pytest.raises(ValueError, match="solver"):
        build_limit(embed, readout, particles=6, grid_steps=5, solver="heun")
    with pytest.raises(ValueError, match="even"):
        build_limit(embed, readout, particles=5, grid_steps=5)


@pytest.mark.parametrize("antithetic", [False, True])
def test_bootstrap_errors_equal_decompose_on_each_resample(antithetic):
    gen = torch.Generator().manual_seed(5)
    values = torch.randn(12, 3, 2, generator=gen, dtype=torch.float64) + 0.2
    target = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    valid = torch.ones(12, dtype=torch.bool)
    valid[5] = False
    boot = bootstrap_errors(values, target, valid=valid, antithetic=antithetic, draws=4, seed=7)
    # Redo each draw by hand: the same unit indices, then decompose on the copied replicas.
    ok = (valid[0::2] & valid[1::2]).repeat_interleave(2) if antithetic else valid
    kept = values[ok]
    group = 2 if antithetic else 1
    units = kept.reshape(-1, group, 3, 2)
    idx = torch.randint(units.shape[0], (4, units.shape[0]), generator=torch.Generator().manual_seed(7))
    for b in range(4):
        d = decompose(units[idx[b]].flatten(0, 1), target, antithetic=antithetic)
        for key in ("rms", "bias", "bias_debiased", "fluctuation"):
            assert math.isclose(boot[key][b], d[key], rel_tol=1e-9, abs_tol=1e-12), key
