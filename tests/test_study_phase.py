"""The phase study: the (β, γ) and (δ, λ) families, the first-step and K-step measurements, the fits and
the classification rule, and ``deepres study --preset phase`` end to end."""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest
import torch

import deepres
from deepres.study import cli
from deepres.study.phase.analysis import analyze_phase, classify, exponent_sign, line_offset, theory_exponent
from deepres.study.phase.config import PhaseConfig, PhaseConfigError
from deepres.study.phase.family import (
    block_linearized_features,
    block_linearized_stack,
    phase_features,
    phase_scaling,
    phase_step,
)
from deepres.study.phase.measure import first_step, k_steps, run_phase_unit
from deepres.study.shared.files import OutputLock
from tests.helpers import relative_error

F64 = torch.float64


def _data(seed=0, samples=10, d_in=5, d_out=5, dim=4):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, d_in, generator=gen, dtype=F64)
    y = torch.randn(samples, d_out, generator=gen, dtype=F64)
    embed = torch.randn(dim, d_in, generator=gen, dtype=F64) / math.sqrt(d_in)
    readout = torch.randn(dim, d_out, generator=gen, dtype=F64) * math.sqrt(d_out)
    return x, y, embed, readout


@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_mlu_point_is_one_deepres_train_step(alpha):
    """At (β, γ) = (1, 1) one step of the family equals one deepres.train step of a DeepResNet."""
    replicas, depth, hidden, dim = 3, 16, 4, 4
    net = deepres.DeepResNet(5, 5, depth, dim, hidden, alpha=alpha, replicas=replicas, dtype=F64,
                             backend="torch", generator=torch.Generator().manual_seed(7))
    x, y, _, _ = _data(1)
    scaling = phase_scaling("depth", (1.0, 1.0), depth=depth, hidden=hidden, dim=dim, alpha=alpha)
    assert scaling.multiplier == net.stack.multiplier and scaling.pre_scale == net.stack.pre_scale
    assert scaling.lr_multiplier == net.lr_multiplier and math.isclose(scaling.init_std**2, dim)
    u, v = net.stack.u.detach().clone(), net.stack.v.detach().clone()
    losses = phase_step(u, v, x, y, net.embed_weight, net.readout_weight, scaling, eta=0.1)
    result = deepres.train(net, x, y, steps=1, eta=0.1, record_features=False)
    assert relative_error(losses, result.losses[0]) <= 1e-12
    assert relative_error(u, net.stack.u) <= 1e-12 and relative_error(v, net.stack.v) <= 1e-12
    h0 = (x @ net.embed_weight.T).expand(replicas, -1, -1)
    after = phase_features(h0, u, v, scaling) @ net.readout_weight / dim
    assert relative_error(after, result.outputs) <= 1e-12


def test_dim_family_at_half_zero_is_mlu_on_unit_variance_weights():
    """(δ, λ) = (1/2, 0) on ũ = u/√D trains exactly like (β, γ) = (1, 1) on u: same outputs, step by step."""
    replicas, depth, hidden, dim = 2, 8, 3, 9
    x, y, embed, readout = _data(2, dim=dim)
    depth_s = phase_scaling("depth", (1.0, 1.0), depth=depth, hidden=hidden, dim=dim)
    dim_s = phase_scaling("dim", (0.5, 0.0), depth=depth, hidden=hidden, dim=dim)
    gen = torch.Generator().manual_seed(3)
    u_t, v_t = (torch.randn(replicas, depth, hidden, dim, generator=gen, dtype=F64) for _ in range(2))
    u, v = u_t * math.sqrt(dim), v_t * math.sqrt(dim)
    for _ in range(3):
        a = phase_step(u, v, x, y, embed, readout, depth_s, eta=0.2)
        b = phase_step(u_t, v_t, x, y, embed, readout, dim_s, eta=0.2)
        assert relative_error(b, a) <= 1e-12
    assert relative_error(u_t * math.sqrt(dim), u) <= 1e-12


def test_scaling_formulas():
    s = phase_scaling("depth", (0.5, 0.25), depth=16, hidden=4, dim=8, alpha=2.0)
    assert math.isclose(s.multiplier, 2.0 / 4 / 4) and math.isclose(s.lr_multiplier, 2 * 4 * 8 / 4)
    s = phase_scaling("dim", (0.75, -0.5), depth=16, hidden=4, dim=16, alpha=1.0)
    assert (s.init_std, s.pre_scale) == (1.0, 0.25)
    assert math.isclose(s.multiplier, 8 / 64) and math.isclose(s.lr_multiplier, 64 / 4)
    with pytest.raises(ValueError, match="diagram"):
        phase_scaling("width", (1, 1), depth=4, hidden=2, dim=2)
    with pytest.raises(ValueError, match="depth"):
        phase_scaling("depth", (1, 1), depth=0, hidden=2, dim=2)
    with pytest.raises(ValueError, match="point"):
        phase_scaling("depth", (1, math.nan), depth=4, hidden=2, dim=2)


def test_block_linearized_model_is_the_first_order_expansion_of_each_block():
    replicas, depth, hidden, dim = 2, 6, 3, 4
    scaling = phase_scaling("depth", (1.0, 1.0), depth=depth, hidden=hidden, dim=dim, alpha=4.0)
    gen = torch.Generator().manual_seed(4)
    u0, v0, du, dv = (2 * torch.randn(replicas, depth, hidden, dim, generator=gen, dtype=F64) for _ in range(4))
    h0 = torch.randn(replicas, 5, dim, generator=gen, dtype=F64)
    net = phase_features(h0, u0, v0, scaling)
    assert relative_error(block_linearized_features(h0, u0, v0, u0, v0, scaling), net) <= 1e-12

    def gap(eps):  # one block changed: the model differs from the network at second order in eps only
        u, v = u0.clone(), v0.clone()
        u[:, 2] += eps * du[:, 2]
        v[:, 2] += eps * dv[:, 2]
        return (block_linearized_features(h0, u0, v0, u, v, scaling) - phase_features(h0, u, v, scaling)).norm()

    ratio = (gap(1e-2) / gap(5e-3)).item()
    assert 3.8 < ratio < 4.2  # O(eps²)


def test_first_step_is_linear_and_matches_the_jacobian():
    replicas, depth, hidden, dim = 4, 16, 2, 4
    x, y, embed, readout = _data(5)
    scaling = phase_scaling("depth", (1.0, 1.25), depth=depth, hidden=hidden, dim=dim)
    gen = torch.Generator().manual_seed(6)
    u0, v0 = (2 * torch.randn(replicas, depth, hidden, dim, generator=gen, dtype=F64) for _ in range(2))
    h0 = (x @ embed.T).expand(replicas, -1, -1)

    def f(u, v):
        return phase_features(h0, u, v, scaling, backend="reference") @ readout / dim

    leaves = (u0.clone().requires_grad_(), v0.clone().requires_grad_())
    loss = 0.5 * (f(*leaves) - y).pow(2).sum(-1).mean(-1).sum()
    gu, gv = torch.autograd.grad(loss, leaves)
    _, tangent = torch.func.jvp(f, (u0, v0), (-scaling.lr_multiplier * gu, -scaling.lr_multiplier * gv))
    linear = tangent.pow(2).flatten(1).mean(1).sqrt()  # the exact linear response per unit η
    # At η = 50 two successive halvings each halve the change (the network is saturated), yet the
    # change per η is far from the linear response: the search must go on halving.
    for eta in (0.01, 50.0):
        out = first_step(x, y, embed, readout, u0, v0, scaling, eta=eta)
        assert abs(out["linearity_ratio"] / 2 - 1) <= 0.05 and out["jvp_gap"] <= 0.05
        assert relative_error(out["output_step"].mean(), linear.mean()) < 0.05
        assert relative_error(out["linear_response"], linear) <= 1e-12
    assert out["halvings"] > 5
    expected_u = scaling.lr_multiplier * gu.flatten(1).norm(dim=1) / u0.flatten(1).norm(dim=1)
    assert relative_error(out["weight_step_u"], expected_u) <= 1e-12
    assert out["init_fluct_h"].shape == (replicas,) and bool((out["init_fluct_h"] > 0).all())


def test_fused_block_linearized_stack_matches_the_plain_model():
    replicas, depth, hidden, dim = 3, 12, 3, 4
    scaling = phase_scaling("depth", (0.75, 0.5), depth=depth, hidden=hidden, dim=dim)
    gen = torch.Generator().manual_seed(10)
    u0, v0, du, dv = (2 * torch.randn(replicas, depth, hidden, dim, generator=gen, dtype=F64) for _ in range(4))
    h0 = torch.randn(replicas, 5, dim, generator=gen, dtype=F64)
    u, v = (u0 + 0.5 * du).requires_grad_(), (v0 + 0.5 * dv).requires_grad_()
    plain = block_linearized_features(h0, u0, v0, u, v, scaling)
    fused = block_linearized_stack(h0, u0, v0, u, v, scaling)
    change = plain - phase_features(h0, u0, v0, scaling)
    assert ((fused - plain).norm() / change.norm()).item() < 1e-8
    weights = torch.randn(plain.shape, generator=gen, dtype=F64)
    for a, b in zip(torch.autograd.grad((plain * weights).sum(), (u, v)),
                    torch.autograd.grad((fused * weights).sum(), (u, v)), strict=True):
        assert relative_error(b, a) < 1e-8


def test_k_steps_flags_divergence_and_measures_nonlinearity():
    replicas, depth, hidden, dim = 4, 8, 2, 4
    x, y, embed, readout = _data(8)
    gen = torch.Generator().manual_seed(9)
    z_u, z_v = (torch.randn(replicas, depth, hidden, dim, generator=gen, dtype=F64) for _ in range(2))
    fine = phase_scaling("depth", (1.0, 1.0), depth=depth, hidden=hidden, dim=dim)
    out = k_steps(x, y, embed, readout, 2 * z_u, 2 * z_v, fine, eta=0.1, steps=3)
    assert not bool(out["diverged"].any()) and bool((out["loss_decrease"] > 0).all())
    assert bool((out["nonlinearity"] > 0).all()) and bool((out["nonlinearity"] < 1).all())
    assert out["losses"].shape == (4, replicas)
    wild = phase_scaling("depth", (1.0, 1.0), depth=depth, hidden=hidden, dim=dim, alpha=1e-3)
    out = k_steps(x, y, embed, readout, 2 * z_u, 2 * z_v, wild, eta=10.0, steps=4)
    assert bool(out["diverged"].all())  # lr multiplier 1e6·L·M·D: the loss blows up


def test_sign_rule_and_classification():
    assert exponent_sign(0.13, 0.2, 0.125) == "+" and exponent_sign(-0.3, -0.2, 0.125) == "−"
    assert exponent_sign(-0.1, 0.1, 0.125) == "0" and exponent_sign(0.05, 0.2, 0.125) == "?"
    assert exponent_sign(None, None, 0.125) == "?"
    assert classify({"init": "+", "output": "−", "unit": "0"})[0] == "unstable"
    assert classify({"init": "0", "output": "−", "unit": "+"})[0] == "trivial"
    assert classify({"init": "−", "output": "0", "unit": "−"})[0] == "lazy ODE"
    assert classify({"init": "−", "output": "0", "unit": "+"})[0] == "over-active"
    assert classify({"init": "−", "output": "?", "unit": "0"})[0] == "undetermined"
    # The scaling argument's exponents put the preset's points where the theory says.
    expected = {(1.0, 1.0): "complete feature learning", (0.75, 0.5): "lazy ODE", (1.25, 1.5): "over-active",
                (0.5, 0.0): "lazy ODE", (1.0, 1.25): "unstable", (1.0, 0.75): "trivial",
                (0.25, -0.5): "unstable"}
    for point, regime in expected.items():
        signs = {role: exponent_sign(*[theory_exponent("depth", q, point)] * 2, 0.0)
                 for role, q in (("init", "init_fluct_h"), ("output", "output_step"), ("unit", "weight_step"))}
        assert classify(signs)[0] == regime, point
    assert line_offset("depth", (1.0, 1.25)) == 0.25 and line_offset("dim", (0.5, -0.25)) == -0.25


def _synthetic(point, depths, seed):
    """Unit results whose means follow the scaling argument's powers of L exactly (replica noise 5 %)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for depth in depths:
        unit = {"diagram": "depth", "point": list(point), "depth": depth, "hidden": 4, "dim": 4, "replicas": 32,
                "eta": 0.5, "steps": 10}
        result = {"eta": 0.01, "linearity_ratio": 2.01, "jvp_gap": 0.01, "halvings": 0, "seconds": 0.1}
        for name in ("output_step", "weight_step", "weight_step_u", "weight_step_v", "preact_step",
                     "init_fluct_h", "init_fluct_f"):
            power = theory_exponent("depth", name, point)
            result[name] = torch.tensor(depth**power * (1 + 0.05 * rng.standard_normal(32)))
        for name in ("output_move", "weight_move", "loss_decrease", "nonlinearity"):
            result[name] = torch.tensor(0.5 + 0.01 * rng.standard_normal(32))
        no = torch.zeros(32, dtype=torch.bool)
        result |= {"nonfinite": no, "nonfinite_lin": no, "diverged": no, "diverged_lin": no,
                   "losses": torch.ones(11, 32)}
        pairs.append((unit, result))
    return pairs


def test_analysis_recovers_known_exponents_and_regimes():
    points = [(1.0, 1.0), (1.0, 1.25), (1.0, 0.75), (0.75, 0.5), (1.25, 1.5)]
    pairs = [pair for i, p in enumerate(points) for pair in _synthetic(p, [16, 32, 64, 128, 256], i)]
    report = analyze_phase(pairs, bootstrap=200)
    got = {(p["beta"], p["gamma"]): p for p in report["depth"]["points"]}
    for point, entry in got.items():
        assert entry["regime"] == entry["theory_regime"], point
        fit = entry["exponents"]["output_step"]
        # 5 % replica noise over 32 replicas: the slope is within a few 0.01 of the power used.
        assert abs(fit["slope"] - theory_exponent("depth", "output_step", point)) < 0.05
        assert fit["ci_low"] < fit["slope"] < fit["ci_high"] and fit["ci_high"] - fit["ci_low"] < 0.1
        assert entry["exponents"]["output_move"]["theory"] is None
    assert got[(1.0, 1.0)]["regime"] == "complete feature learning"
    assert all(c["holds"] for c in report["checks"]), report["checks"]
    assert len(report["depth"]["measurements"]) == len(pairs)


def test_config_validation_names_the_field():
    assert len(PhaseConfig().units()) == 13 * 5 + 9 * 4
    with pytest.raises(PhaseConfigError, match="depths"):
        PhaseConfig(depths=[16])
    with pytest.raises(PhaseConfigError, match="points"):
        PhaseConfig(points=[[1, 1], [1, 1]])
    with pytest.raises(PhaseConfigError, match="first_eta"):
        PhaseConfig(first_eta=0.0)
    with pytest.raises(PhaseConfigError, match="replicas"):
        PhaseConfig(replicas=1)


def _parse(argv):
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    return parser.parse_args(argv)


TINY = ["--preset", "phase", "--depths", "4,8", "--replicas", "4", "--steps", "2", "--bootstrap", "20",
        "--phase-points", "1:1,1:1.25,0.5:0", "--phase-dims", "4,8", "--phase-dim-points", "0.5:0",
        "--phase-dim-depth", "4", "--phase-dim-hidden", "2", "--phase-dim-replicas", "4", "--no-progress"]


def test_phase_preset_end_to_end_through_the_cli(tmp_path, capsys):
    args = _parse([*TINY, "--out", str(tmp_path)])
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "study.json").read_text())
    assert report["units"] == {"total": 8, "resumed": 0, "ran": 8}
    depth = report["phase"]["depth"]["points"]
    assert [(p["beta"], p["gamma"]) for p in depth] == [(1.0, 1.0), (1.0, 1.25), (0.5, 0.0)]
    for p in depth:
        fit = p["exponents"]["output_step"]
        assert fit["ci_low"] <= fit["slope"] <= fit["ci_high"] and p["regime"] in (
            "unstable", "trivial", "lazy ODE", "complete feature learning", "over-active", "undetermined")
    assert report["phase"]["dim"]["points"][0]["delta"] == 0.5
    assert "output_move" not in report["phase"]["dim"]["points"][0]["exponents"]  # first step only in D
    rows = list(csv.DictReader((tmp_path / "phase_points.csv").read_text().splitlines()))
    assert len(rows) == 4 and {"regime", "output_step", "output_step_ci_low"} <= set(rows[0])
    for name in ("phase_diagram.png", "phase_diagram_dim.png", "coord_output_step.png", "coord_dim.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "-> " in capsys.readouterr().out
    assert cli.main(_parse([*TINY, "--out", str(tmp_path), "--no-plots"])) == 0  # resumes
    assert json.loads((tmp_path / "study.json").read_text())["units"]["resumed"] == 8


def test_phase_preset_refuses_a_folder_another_study_writes_into(tmp_path, capsys):
    with OutputLock(tmp_path).held():
        assert cli.main(_parse([*TINY, "--out", str(tmp_path), "--no-plots"])) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--wait" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "units").exists()


def test_phase_units_are_keyed_by_device_type_and_backend(tmp_path):
    args = [*TINY, "--out", str(tmp_path), "--no-plots"]
    assert cli.main(_parse(args)) == 0
    report = json.loads((tmp_path / "study.json").read_text())
    assert report["unit_identity"] == {"backend": "auto", "device": "cpu"} and report["corrupt_files"] == []
    # Another backend: another configuration, whose report files replace these only with --replace;
    # nothing read back (and --wait, which waits only when the folder is busy).
    assert cli.main(_parse([*args, "--backend", "torch", "--wait"])) == 2
    assert cli.main(_parse([*args, "--backend", "torch", "--wait", "--replace"])) == 0
    assert json.loads((tmp_path / "study.json").read_text())["units"]["resumed"] == 0


@pytest.mark.parametrize(("argv", "flag"), [
    (["--preset", "phase", "--particles", "64"], "--particles"),
    (["--preset", "phase", "--widths", "4,8"], "--widths"),
    (["--preset", "phase", "--phase-tolerance", "-1"], "--phase-tolerance"),
    (["--preset", "phase", "--depths", "16"], "--depths"),
    (["--preset", "quick", "--phase-points", "1:1"], "--phase-points"),
])
def test_cli_errors_name_the_option(argv, flag, capsys, tmp_path):
    assert cli.main(_parse([*argv, "--out", str(tmp_path), "--no-progress"])) == 2
    err = capsys.readouterr().err
    assert flag in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "units").exists()  # checked before any work


def test_bad_point_list_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(["--preset", "phase", "--phase-points", "1;1"])
    assert exit_info.value.code == 2 and "--phase-points" in capsys.readouterr().err


def test_run_phase_unit_is_reproducible():
    unit = {"kind": "phase", "diagram": "depth", "point": [1.0, 1.0], "depth": 4, "hidden": 2, "dim": 4,
            "alpha": 1.0, "replicas": 4, "first_eta": 0.01, "eta": 0.1, "steps": 1, "seed": 0, "task": "paper",
            "samples": 6, "activation": "tanh", "dtype": "float64", "linearity_tolerance": 0.05,
            "max_halvings": 30}
    a, b = run_phase_unit(unit), run_phase_unit(unit)
    assert torch.equal(a["output_step"], b["output_step"]) and torch.equal(a["output_move"], b["output_move"])
    # Common random numbers: another point at the same L starts from the same standardized weights.
    c = run_phase_unit(unit | {"point": [1.0, 1.25]})
    assert torch.equal(a["init_fluct_h"], c["init_fluct_h"])
