"""The α axis, the D rate and the lazy sweep's report on planted data; the time estimate."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from deepres.study import cli
from deepres.study.convergence import cli as convergence_cli
from deepres.study.convergence.analysis import BOUNDS, _alpha_axis, _dim_fits
from deepres.study.convergence.estimate import calibrate, estimate, format_seconds, model_seconds, probe_unit
from deepres.study.convergence.lazy_analysis import LINEARIZATION_FROM_ALPHA, analyze_lazy
from deepres.study.convergence.presets import StudyConfig
from deepres.study.convergence.run import run_study
from deepres.study.shared.store import unit_key


class _Store:
    """A results store held in memory: what the analysis reads, planted by the test."""

    def __init__(self) -> None:
        self.results: dict[str, dict] = {}

    def put(self, unit: dict, result: dict) -> None:
        self.results[unit_key(unit)] = result

    def load(self, unit: dict) -> dict:
        return self.results[unit_key(unit)]


def _resnet_result(spread: float, gen: torch.Generator, replicas: int = 256) -> dict:
    """Replicas around a common mean with RMS spread ``spread`` (output and embedding alike)."""
    mean = torch.randn(1, 6, 3, generator=gen, dtype=torch.float64)
    outputs = torch.stack([mean.expand(replicas, 6, 3),
                           mean + spread * torch.randn(replicas, 6, 3, generator=gen, dtype=torch.float64)])
    return {"outputs": outputs, "features": 2 * outputs, "losses": torch.ones(3, replicas),
            "nonfinite": torch.zeros(replicas, dtype=torch.bool), "weight_movement": torch.ones(replicas)}


def test_alpha_axis_fits_its_range_and_reports_local_slopes():
    config = StudyConfig(alpha_axis=[0.5, 1.0, 2.0, 4.0, 8.0, 16.0], alpha_axis_depth=8, alpha_axis_hidden=2,
                         alpha_fit=[2.0, 8.0], antithetic=False, bootstrap=200)
    store = _Store()
    gen = torch.Generator().manual_seed(0)
    for unit in config.alpha_axis_units():
        # Planted: spread ∝ α inside the range, flat outside it.
        store.put(unit, _resnet_result(0.01 * min(max(unit["alpha"], 2.0), 8.0), gen))
    axis = _alpha_axis(config, store)
    assert axis["range"] == [2.0, 8.0]
    for fit in axis["fits"]:
        assert fit["name"] == "fluctuation_vs_alpha" and fit["theory"] == 1.0
        assert fit["x"] == [2.0, 4.0, 8.0] and abs(fit["slope"] - 1) < 0.05 and fit["theory_in_ci"]
        assert sorted(e["x"] for e in fit["excluded"]) == [0.5, 1.0, 16.0]
        assert all("outside the fitted range" in e["reason"] for e in fit["excluded"])
    output = [p for p in axis["points"] if p["space"] == "output"]
    assert output[0]["local_slope"] is None
    assert abs(output[-1]["local_slope"]) < 0.2 and abs(output[3]["local_slope"] - 1) < 0.2


def test_dim_rate_is_reported_against_the_bound_in_both_normalizations():
    config = StudyConfig(depths=[8], widths=[2], dims=[4, 16, 64], bootstrap=50)
    rng = np.random.default_rng(0)
    points = {}
    for space in ("output", "embedding"):
        for dim in config.dims:
            value = 0.1 * dim ** (0.2 if space == "output" else 0.7)
            row = {"fluctuation": value, "reference_error": 0.0, "bias_se": 0.0}
            draws = {"fluctuation": value * np.exp(0.01 * rng.standard_normal(50))}
            points[(space, 0, dim, 1.0, 0.1, 20, 8, 2)] = {"row": row, "draws": draws}
    fits = _dim_fits(config, points, step="last")
    by = {(f["space"], f["normalization"]): f for f in fits}
    assert set(by) == {("output", "coordinate"), ("embedding", "coordinate"), ("embedding", "norm")}
    coordinate, norm = by[("embedding", "coordinate")], by[("embedding", "norm")]
    # The norm of h is √D times its per-coordinate RMS: +1/2 on the slope and on every bootstrap draw.
    assert norm["slope"] == pytest.approx(coordinate["slope"] + 0.5, abs=1e-9)
    assert norm["ci_low"] == pytest.approx(coordinate["ci_low"] + 0.5, abs=1e-9)
    for (space, normalization), fit in by.items():
        assert fit["theory"] is None and fit["theory_in_ci"] is None and fit["step"] == 20
        assert fit["bound"] == BOUNDS[("fluctuation_vs_dim", space, normalization)]
    assert by[("output", "coordinate")]["within_bound"] is True  # planted +0.2 ≤ +0.5
    assert coordinate["within_bound"] is False  # planted +0.7 > +0.5


def test_lazy_report_fits_paired_replicas_and_compares_with_d_inf():
    alphas = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    config = StudyConfig(lazy_alphas=alphas, lazy_replicas=8, lazy_fit_min=16.0, bootstrap=100)
    store = _Store()
    gen = torch.Generator().manual_seed(3)
    replicas = config.lazy_replicas
    d_inf = 0.2 + 0.01 * torch.rand(replicas, generator=gen, dtype=torch.float64)
    scale = 1 + 0.3 * torch.rand(replicas, generator=gen, dtype=torch.float64)  # one per replica, every α
    for unit in config.lazy_units():
        a = unit["alpha"]
        # Planted: movement ∝ 1/α; the lazy-ODE distance 1/α² beyond α = 8, flatter below.
        store.put(unit, {"weight_movement": scale / a, "lazy_ode_distance": scale / (a * max(a, 8.0)),
                         "linearization_distance": d_inf + scale / a**2, "output_movement": scale,
                         "final_loss": scale, "nonfinite": torch.zeros(replicas, dtype=torch.bool)})
    (limit,) = config.lazy_limit_units()
    store.put(limit, {"d_inf": d_inf, "nonfinite": torch.zeros(replicas, dtype=torch.bool)})
    report = analyze_lazy(config, store)
    fits = {f["name"]: f for f in report["fits"]}
    movement, ode = fits["weight_movement_vs_alpha"], fits["lazy_ode_distance_vs_alpha"]
    # Paired replicas: the planted per-replica factor cancels in every resampled curve.
    assert movement["slope"] == pytest.approx(-1.0) and movement["ci_high"] - movement["ci_low"] < 1e-9
    assert ode["slope"] == pytest.approx(-2.0) and ode["theory"] == -2.0 and ode["x"] == [16.0, 32.0, 64.0]
    assert len(ode["excluded"]) == 4 and ode["range"] == [16.0, None]
    (entry,) = report["d_inf"]
    assert entry["d_inf"] == pytest.approx(float(d_inf.mean()))
    rows = [p for p in report["points"]]
    assert rows[4]["local_slope"] == pytest.approx(-2.0) and rows[1]["local_slope"] == pytest.approx(-1.0)
    gaps = [r["linearization_gap"] for r in rows]
    assert gaps[-1] == pytest.approx(float(scale.mean()) / 64**2)
    (lin,) = report["linearization"]
    assert lin["from_alpha"] == LINEARIZATION_FROM_ALPHA and lin["alphas"] == [8.0, 16.0, 32.0, 64.0]
    assert lin["spread"] == pytest.approx(float(scale.mean()) * (1 / 64 - 1 / 64**2))


def test_cost_model_probe_and_estimate():
    config = StudyConfig(depths=[2, 4], widths=[1, 2], replicas=4, particles=32, grid_steps=4, limit_sets=2,
                         steps=[3], records=2, samples=6, alpha_axis=[], lazy_alphas=[])
    units = config.units()
    resnets = sorted((u for u in units if u["kind"] == "resnet"), key=model_seconds)
    assert model_seconds(resnets[0]) < model_seconds(resnets[-1])
    limit = next(u for u in units if u["kind"] == "limit" and u["sets"] == 2)
    probe = probe_unit(limit)
    assert probe["sets"] == 1 and 1 <= probe["steps"] <= 3 and probe["record_steps"] == [0, probe["steps"]]
    calibration = calibrate(units)
    assert set(calibration) == {"resnet", "limit"}
    assert all(c["seconds"] > 0 and c["factor"] == c["seconds"] / c["model_seconds"] for c in calibration.values())
    predicted = estimate(units, calibration)
    assert predicted["by_kind"]["resnet"]["units"] == len(resnets)
    expected = sum(model_seconds(u) * calibration[u["kind"]]["factor"] for u in units)
    assert math.isclose(predicted["seconds"], expected, rel_tol=1e-12)
    assert format_seconds(42.4) == "42 s" and format_seconds(750) == "12 min 30 s"
    assert format_seconds(3725) == "1 h 02 min"
    with pytest.raises(ValueError, match="kind"):
        model_seconds(dict(limit, kind="other"))


def test_new_options_are_checked_before_any_work(capsys):
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    assert cli.main(parser.parse_args(["--alpha-fit", "8,2", "--no-progress"])) == 2
    assert "alpha_fit" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:   # a value argparse's own type refuses
        parser.parse_args(["--alpha-axis", "0,1", "--no-progress"])
    assert exit_info.value.code == 2 and "--alpha-axis" in capsys.readouterr().err
    args = parser.parse_args(["--alpha-axis", "1,2", "--alpha-axis-depth", "8", "--lazy-fit-min", "4"])
    config = convergence_cli.config_from_args(args)
    assert config.alpha_axis == [1.0, 2.0] and config.alpha_axis_depth == 8 and config.lazy_fit_min == 4.0


def test_study_prints_and_saves_its_estimate_and_a_rerun_keeps_it(tmp_path, capsys):
    config = StudyConfig(depths=[2, 4], widths=[2], replicas=4, particles=32, grid_steps=4, limit_sets=2,
                         steps=[2], records=2, samples=6, alpha_axis=[1.0, 2.0], alpha_axis_depth=2,
                         alpha_axis_hidden=2, alpha_fit=[1.0, 2.0], lazy_alphas=[], bootstrap=20)
    report = run_study(config, tmp_path, progress=False, plots=False)
    printed = capsys.readouterr().err
    assert f"{len(config.units())} units to run, estimated" in printed
    estimate = report["estimate"]
    assert set(estimate["by_kind"]) == {"resnet", "limit"} and estimate["seconds"] > 0
    assert estimate["measured_seconds"] > 0 and set(estimate["measured_unit_seconds"]) == {"resnet", "limit"}
    # Reference-error checks: one per group (D).
    assert sum("reference error of the limit under" in c["check"] for c in report["checks"]) == 1
    again = run_study(config, tmp_path, progress=False, plots=False)
    assert again["units"]["ran"] == 0 and "units to run" not in capsys.readouterr().err
    assert again["estimate"]["from_an_earlier_run"] and again["estimate"]["seconds"] == estimate["seconds"]
