"""The shapes study: prefix coupling across D, the GD step against deepres.train, the reference rule,
the fits on synthetic errors, resume after a kill, and the CLI's option errors."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

import deepres
from deepres.study import cli
from deepres.study.shapes.analysis import analyze_shapes, fit_two_terms, point_errors, reference_error
from deepres.study.shapes.config import ShapesConfig, ShapesConfigError
from deepres.study.shapes.measure import run_shapes_unit, unit_embedding
from deepres.study.shapes.network import coupled_embedding, draw_weights, prefix, train_engine, train_inplace
from deepres.study.shapes.run import run_shapes
from deepres.study.shared.fit import bootstrap_slope
from tests.helpers import relative_error
from tests.test_study_sweep import _DiesAfter, _Killed

F64 = torch.float64

#: A study that runs in a few seconds: reference (8, 32, 32), D up to 16.
TINY = {"repetitions": 2, "reference": [8, 32, 32], "reference_draws": 3, "dim_fixed": [8, 4],
        "dims": [4, 8, 16], "width_fixed": [8, 8], "widths": [2, 4, 8], "scales": [1.0, 2.0],
        "balanced_base": [2, 2, 2], "contrast_dim": 4, "replicas": 3, "steps": 3, "record_steps": [2, 3],
        "bootstrap": 50}


def test_embedding_of_a_d_network_is_the_prefix_of_a_larger_ones():
    config = ShapesConfig(**TINY)
    small, large = config.point_unit(1, (8, 4, 4)), config.point_unit(1, (8, 4, 16))
    embed_s, readout_s = unit_embedding(small, 5, 5, dtype=F64)
    embed_l, readout_l = unit_embedding(large, 5, 5, dtype=F64)
    assert torch.equal(embed_s, embed_l[:4]) and torch.equal(readout_s, readout_l[:4])
    reference = unit_embedding(config.reference_units(1)[0], 5, 5, dtype=F64)
    assert torch.equal(embed_l, reference[0][:16]) and torch.equal(readout_l, reference[1][:16])
    # deepres's law: W_E entries N(0, 1/d_in), W_U entries N(0, d_out).
    embed, readout = coupled_embedding(5, 5, 20000, seed=3, dtype=F64)
    assert abs(embed.var().item() * 5 - 1) < 0.03 and abs(readout.var().item() / 5 - 1) < 0.03
    # Another repetition resamples them; the data stay (the task has no repetition in its seed).
    other, _ = unit_embedding(config.point_unit(0, (8, 4, 4)), 5, 5, dtype=F64)
    assert not torch.equal(other, embed_s)


def test_a_unit_is_the_deepresnet_of_its_shape_trained_by_deepres_train():
    config = ShapesConfig(**(TINY | {"dtype": "float64"}))
    unit = config.point_unit(0, (8, 4, 16))
    result = run_shapes_unit(unit)
    from deepres.study.shapes.measure import weight_seed
    from deepres.study.shared.data import make_task

    task = make_task("paper", 0, dtype=F64)
    embed, readout = unit_embedding(unit, 5, 5, dtype=F64)
    u, v = draw_weights(8, 4, 16, 3, weight_seed(unit), dtype=F64)
    net = deepres.DeepResNet(5, 5, depth=8, dim=16, hidden=4, replicas=3, dtype=F64)
    with torch.no_grad():
        net.embed_weight.copy_(embed)
        net.readout_weight.copy_(readout)
        net.stack.u.copy_(u.transpose(0, 1))
        net.stack.v.copy_(v.transpose(0, 1))
    trained = deepres.train(net, task.x, task.y, steps=3, eta=config.eta, record_steps=[2, 3])
    assert relative_error(result["features"], trained.recorded_features.float()) < 1e-6
    assert relative_error(result["outputs"], trained.recorded_outputs.float()) < 1e-6


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_inplace_step_matches_the_engine_and_autograd(activation):
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(6, 3, generator=gen, dtype=F64), torch.randn(6, 2, generator=gen, dtype=F64)
    embed, readout = prefix(*coupled_embedding(3, 2, 9, seed=5, dtype=F64), 7)
    u, v = draw_weights(5, 3, 7, 2, seed=6, dtype=F64)
    options = {"eta": 0.3, "steps": 4, "record_steps": [0, 2, 4], "activation": activation, "alpha": 1.5}
    a = train_inplace(x, y, embed, readout, u.clone(), v.clone(), **options)
    for backend in ("torch", "reference"):
        b = train_engine(x, y, embed, readout, u.clone(), v.clone(), backend=backend, **options)
        for key in ("features", "outputs", "losses"):
            assert relative_error(a[key], b[key]) < 1e-12


def test_reference_error_and_point_errors():
    draws = torch.randn(4, 2, 3, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    expected = (draws[..., :2].var(0) / 4).mean((-1, -2)).sqrt()
    assert relative_error(reference_error(draws, 2), expected) < 1e-15
    reference = {"features": draws.mean(0), "outputs": draws.mean(0)[..., :1]}
    result = {"features": reference["features"][:, None, :, :2].repeat(1, 5, 1, 1) + 0.5,
              "outputs": reference["outputs"][:, None].repeat(1, 5, 1, 1) - 2.0}
    errors = point_errors(result, reference)  # the first D = 2 coordinates of the reference
    assert torch.allclose(errors["embedding"], torch.full((2, 5), 0.5, dtype=F64))
    assert torch.allclose(errors["output"], torch.full((2, 5), 2.0, dtype=F64))


def _synthetic(config: ShapesConfig, a: float, b: float, ref_noise: float, seed: int = 0):
    """(unit, result) pairs whose errors follow err² = a²·D/(LM) + b²/D exactly (up to replica noise)."""
    gen = torch.Generator().manual_seed(seed)
    steps, samples, d_out = len(config.record_steps), config.samples, 5
    pairs, dim_ref = [], config.reference[2]
    for rep in range(config.repetitions):
        for unit in config.reference_units(rep):
            pairs.append((unit, {"features": ref_noise * torch.randn(steps, 1, samples, dim_ref, generator=gen),
                                 "outputs": ref_noise * torch.randn(steps, 1, samples, d_out, generator=gen),
                                 "losses": torch.ones(config.steps + 1, 1)}))
        for depth, hidden, dim in config.shapes():
            unit = config.point_unit(rep, (depth, hidden, dim))
            scale = math.sqrt(a**2 * dim / (depth * hidden) + b**2 / dim)
            shape = (steps, config.replicas, samples)
            pairs.append((unit, {"features": scale * torch.randn(*shape, dim, generator=gen),
                                 "outputs": scale * torch.randn(*shape, d_out, generator=gen)}))
    return pairs


def test_reference_rule_excludes_points_the_reference_cannot_resolve():
    config = ShapesConfig(**(TINY | {"replicas": 8}))
    quiet = analyze_shapes(config, _synthetic(config, 0.8, 2.0, ref_noise=1e-4))
    fixed = {s for name in ("dim", "width") for s in config.sweep_shapes()[name]}  # 5 distinct shapes
    assert quiet["fits"]["embedding"]["excluded"] == [] and quiet["fits"]["embedding"]["points"] == len(fixed)
    noisy = analyze_shapes(config, _synthetic(config, 0.8, 2.0, ref_noise=1.0))
    # The reference's own error (≈ 1/√3 of its draws' spread) is above 1/3 of every point's error.
    fit = noisy["fits"]["embedding"]
    assert fit["a"] is None and fit["points"] == 0 and len(fit["excluded"]) == len(fixed)
    assert "reference error" in fit["excluded"][0]["reason"]
    rows = [r for r in noisy["measurements"] if r["step"] == 3 and r["sweep"] in ("dim", "width")]
    assert all(r["ref_err_embedding"] > config.ref_ratio * r["err_embedding"] for r in rows)
    excluded = noisy["fits"]["embedding_vs_P"]["excluded"]
    assert all(e["value"] * config.ref_ratio < float(e["reason"].split()[2]) for e in excluded)


def test_fit_recovers_known_constants_from_synthetic_errors():
    rng = np.random.default_rng(0)
    depth, hidden = 50, np.array([100.0] * 6 + [4, 16, 64, 256, 1024])
    dim = np.array([8.0, 32, 128, 512, 1024, 2000] + [128.0] * 5)
    truth = np.sqrt(0.8**2 * dim / (depth * hidden) + 2.0**2 / dim)
    noisy = truth * np.exp(0.01 * rng.standard_normal(truth.size))
    draws = noisy * np.exp(0.02 * rng.standard_normal((400, truth.size)))
    fit = fit_two_terms(dim / (depth * hidden), 1 / dim, noisy, draws)
    assert abs(fit["a"] - 0.8) < 0.03 and abs(fit["b"] - 2.0) < 0.06
    assert fit["ci_a"][0] < 0.8 < fit["ci_a"][1] and fit["ci_b"][0] < 2.0 < fit["ci_b"][1]
    # The linear form fits these square-root errors worse.
    linear = fit_two_terms((dim / (depth * hidden)) ** 2, 1 / dim, noisy)
    assert linear["rms_log_residual"] > 3 * fit["rms_log_residual"]
    # Along the balanced family every term scales as P^(-1/6): the slope machinery finds it.
    s = np.array([1.0, 2, 4, 8, 16])
    shapes = np.stack([2 * s, 8 * s**3, 4 * s**2])
    errors = np.sqrt(0.8**2 * shapes[2] / (shapes[0] * shapes[1]) + 2.0**2 / shapes[2] + 1 / shapes[0] ** 2)
    slope = bootstrap_slope(shapes.prod(0), errors, errors * np.exp(0.01 * rng.standard_normal((200, 5))))
    assert abs(slope.slope + 1 / 6) < 1e-9 and slope.covers(-1 / 6)


def test_a_killed_run_resumes_without_recomputing_stored_units(tmp_path):
    config = ShapesConfig(**TINY)
    with pytest.raises(_Killed):
        run_shapes(config, tmp_path, executor=_DiesAfter(7), progress=False, plots=False, estimate=False)
    stored = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "units").glob("*.pt")}
    assert len(stored) == 7
    report = run_shapes(config, tmp_path, progress=False, plots=False, estimate=False)
    total = len(config.units())
    assert report["units"] == {"total": total, "resumed": 7, "ran": total - 7, "failed": 0}
    assert all((tmp_path / "units" / name).stat().st_mtime_ns == t for name, t in stored.items())
    again = run_shapes(config, tmp_path, progress=False, plots=False, estimate=False)
    assert again["units"]["resumed"] == total and again["units"]["ran"] == 0
    assert again["wall_seconds"]["earlier_run"]["run"] == report["wall_seconds"]["run"]
    assert again["shapes"]["fits"] == json.loads((tmp_path / "study.json").read_text())["shapes"]["fits"]
    fits = report["shapes"]["fits"]
    assert set(fits) >= {"embedding", "output", "embedding_vs_P", "output_vs_P"}
    assert set(fits["embedding"]) >= {"a", "b", "ci_a", "ci_b"} and "linear" in fits["output"]


def _parse(argv):
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    return parser.parse_args(argv)


_TINY_FLAGS = ["--preset", "shapes", "--shapes-reference", "4:16:16", "--shapes-reference-draws", "2",
               "--shapes-repetitions", "1", "--shapes-dim-fixed", "4:4", "--shapes-dims", "4,8",
               "--shapes-width-fixed", "4:8", "--shapes-widths", "2,4", "--shapes-scales", "1,2",
               "--shapes-balanced-base", "2:2:2", "--shapes-contrast-dim", "4", "--replicas", "2",
               "--steps", "3", "--bootstrap", "20", "--no-progress"]


def test_shapes_preset_end_to_end_through_the_cli(tmp_path, capsys):
    assert cli.main(_parse([*_TINY_FLAGS, "--out", str(tmp_path)])) == 0
    report = json.loads((tmp_path / "study.json").read_text())
    assert report["config"]["record_steps"] == [2, 3] and "shapes" in report
    assert (tmp_path / "shapes_embedding.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "shapes_measurements.csv").read_text().startswith("sweep,")
    captured = capsys.readouterr()
    assert "embedding_vs_P" in captured.out and "estimated" in captured.err
    # Provenance, as for every study: in study.json and in a sidecar beside each table.
    assert report["provenance"]["preset"] == "shapes" and report["provenance"]["deepres_version"]
    for table in ("shapes_measurements.csv", "shapes_fits.csv"):
        sidecar = json.loads((tmp_path / table.replace(".csv", ".provenance.json")).read_text())
        assert sidecar["file"] == table and sidecar["config_digest"] == report["provenance"]["config_digest"]


@pytest.mark.parametrize(("argv", "flag"), [
    (["--preset", "quick", "--shapes-dims", "4,8"], "--shapes-dims"),
    (["--preset", "shapes", "--depths", "16"], "--depths"),
    (["--preset", "shapes", "--particles", "64"], "--particles"),
    (["--preset", "shapes", "--shapes-reference-draws", "1"], "--shapes-reference-draws"),
    (["--preset", "shapes", "--shapes-dims", "4,4096"], "--shapes-reference"),
    (["--preset", "shapes", "--etas", "0.1,0.2"], "--etas"),
    (["--preset", "shapes", "--ref-ratio", "0.5", "--shapes-scales", "1,-2"], "--shapes-scales"),
    (["--preset", "shapes", "--device", "nosuchdevice"], "--device"),
])
def test_cli_errors_name_the_option(argv, flag, capsys, tmp_path):
    assert cli.main(_parse([*argv, "--out", str(tmp_path), "--no-progress"])) == 2
    err = capsys.readouterr().err
    assert flag in err and len(err.strip().splitlines()) == 1 and err.startswith("deepres study: error:")
    assert not (tmp_path / "units").exists()  # checked before any work


def test_bad_shape_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(["--preset", "shapes", "--shapes-reference", "50:2000"])
    assert exit_info.value.code == 2 and "--shapes-reference" in capsys.readouterr().err


def test_config_validation_names_the_field():
    with pytest.raises(ShapesConfigError, match="reference_draws"):
        ShapesConfig(reference_draws=1)
    with pytest.raises(ShapesConfigError, match="record_steps"):
        ShapesConfig(steps=5)
    with pytest.raises(ShapesConfigError, match="step"):
        ShapesConfig(step="fused")
    # A shape shared by two sweeps is one unit.
    config = ShapesConfig(**(TINY | {"dims": [4, 8], "widths": [4, 8], "dim_fixed": [8, 8],
                                     "width_fixed": [8, 8]}))
    assert len(config.shapes()) == len(set(config.shapes()))
    assert len(config.units()) == 2 * (3 + len(config.shapes()))
