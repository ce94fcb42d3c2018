"""Rate fits: exact power laws, a planted slope recovered from replicas with a CI that covers it,
and the exclusion of points whose reference error is not well below the error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepres.study.convergence.analysis import _fit, bootstrap_errors
from deepres.study.convergence.compare import decompose
from deepres.study.shared.fit import bootstrap_slope, loglog_fit


def test_loglog_fit_exact_power_law():
    rng = np.random.default_rng(0)
    slope, prefactor = rng.uniform(-2, 2), rng.uniform(0.1, 10)
    x = np.array([3.0, 7, 20, 90])
    fitted, c = loglog_fit(x, prefactor * x**slope)
    assert abs(fitted - slope) < 1e-10 and abs(c / prefactor - 1) < 1e-10


def test_planted_fluctuation_slope_is_recovered_with_covering_ci():
    """Replicas with spread σ(L) = 0.7·L^(−1/2) around a target: the fitted slope is −1/2 ± noise."""
    gen = torch.Generator().manual_seed(11)
    depths = [4.0, 8.0, 16.0, 32.0, 64.0]
    target = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    values, draws = [], []
    for depth in depths:
        replicas = target + 0.7 * depth**-0.5 * torch.randn(256, 10, 5, generator=gen, dtype=torch.float64)
        valid = torch.ones(256, dtype=torch.bool)
        values.append(decompose(replicas, target)["fluctuation"])
        draws.append(bootstrap_errors(replicas, target, valid=valid, antithetic=False, draws=400,
                                      seed=int(depth))["fluctuation"])
    fit = bootstrap_slope(depths, values, np.stack(draws, axis=1))
    assert abs(fit.slope + 0.5) < 0.03
    assert fit.covers(-0.5)
    assert fit.ci_high - fit.ci_low < 0.08
    assert fit.bootstrap == 400


def test_planted_bias_slope_is_recovered():
    """A bias b(L) = 2/L under replica noise: the debiased bias fits slope −1."""
    gen = torch.Generator().manual_seed(12)
    depths = [4.0, 8.0, 16.0, 32.0]
    direction = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    direction /= direction.pow(2).mean().sqrt()
    target = torch.zeros(10, 5, dtype=torch.float64)
    points = []
    for depth in depths:
        replicas = (2 / depth) * direction + 0.05 * torch.randn(512, 10, 5, generator=gen, dtype=torch.float64)
        valid = torch.ones(512, dtype=torch.bool)
        d = decompose(replicas, target)
        boot = bootstrap_errors(replicas, target, valid=valid, antithetic=False, draws=300, seed=int(depth))
        points.append({"value": d["bias_debiased"], "reference_error": 0.0, "bias_se": d["bias_se"],
                       "draws": boot["bias_debiased"]})
    fit = _fit(depths, points, "bias_debiased", ref_ratio=1 / 3, noise_ratio=3.0, level=0.95)
    assert abs(fit.slope + 1) < 0.05 and fit.covers(-1.0)
    assert fit.excluded == []


def test_points_with_large_reference_error_or_noise_are_excluded():
    draws = np.ones(50)
    points = [{"value": v, "reference_error": r, "bias_se": se, "draws": draws * v}
              for v, r, se in [(1.0, 0.1, 0.01), (0.5, 0.1, 0.01), (0.25, 0.1, 0.01), (0.2, 0.0, 0.1)]]
    fit = _fit([1.0, 2.0, 4.0, 8.0], points, "bias_debiased", ref_ratio=1 / 3, noise_ratio=3.0, level=0.95)
    assert fit.x == [1.0, 2.0] and fit.slope == pytest.approx(-1.0)
    reasons = [e["reason"] for e in fit.excluded]
    assert "reference error" in reasons[0] and "standard error" in reasons[1]
    lonely = _fit([1.0, 2.0], points[2:], "bias_debiased", ref_ratio=1 / 3, noise_ratio=3.0, level=0.95)
    assert lonely.slope is None and len(lonely.excluded) == 2


def test_fit_input_errors():
    with pytest.raises(ValueError, match="positive"):
        loglog_fit([1, 2], [1, -1])
    with pytest.raises(ValueError, match="distinct"):
        loglog_fit([2, 2], [1, 3])
    with pytest.raises(ValueError, match="draws"):
        bootstrap_slope([1, 2], [1, 2], np.ones((3, 3)))
    with pytest.raises(ValueError, match="level"):
        bootstrap_slope([1, 2], [1, 2], np.ones((3, 2)), level=1.5)
