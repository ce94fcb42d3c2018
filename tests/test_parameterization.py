import math

import pytest

from deepres import PARAMETERIZATIONS, Parameterization


def test_mlu_matches_design_table():
    L, M, D, alpha = 96, 7, 12, 2.5
    p = Parameterization("mlu", depth=L, hidden=M, dim=D, alpha=alpha)
    assert p.init_std_u == pytest.approx(math.sqrt(D))
    assert p.init_std_v == pytest.approx(math.sqrt(D))
    assert p.pre_scale == pytest.approx(1 / D)
    assert p.multiplier == pytest.approx(alpha / (L * M))
    assert p.lr_multiplier == pytest.approx(L * M * D / alpha**2)
    # One step moves each unit by O(1): c · lr multiplier = D/α, independent of L and M.
    assert p.multiplier * p.lr_multiplier == pytest.approx(D / alpha)


def test_depth_mup_branch_scales_like_inverse_sqrt_depth():
    shallow = Parameterization("depth_mup", depth=16, hidden=4, dim=8, alpha=1.0)
    deep = Parameterization("depth_mup", depth=64, hidden=4, dim=8, alpha=1.0)
    assert shallow.multiplier / deep.multiplier == pytest.approx(2.0)
    assert deep.pre_scale == pytest.approx(1 / math.sqrt(8))
    assert deep.lr_multiplier == 1.0


def test_standard_is_unscaled_fan_in():
    p = Parameterization("standard", depth=10, hidden=9, dim=4, alpha=3.0)
    assert (p.multiplier, p.pre_scale, p.lr_multiplier) == (1.0, 1.0, 1.0)
    assert p.init_std_u == pytest.approx(0.5)
    assert p.init_std_v == pytest.approx(1 / 3)


@pytest.mark.parametrize("name", PARAMETERIZATIONS)
def test_every_quantity_is_a_positive_float(name):
    p = Parameterization(name, depth=3, hidden=2, dim=5, alpha=0.5)
    for value in (p.init_std_u, p.init_std_v, p.pre_scale, p.multiplier, p.lr_multiplier):
        assert isinstance(value, float) and value > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "mup"}, ValueError, "parameterization must be one of"),
        ({"name": 3}, TypeError, "parameterization must be a str"),
        ({"depth": 0}, ValueError, "depth must be a positive int; got 0"),
        ({"hidden": 2.0}, TypeError, "hidden must be a positive int; got float"),
        ({"dim": True}, TypeError, "dim must be a positive int"),
        ({"alpha": 0.0}, ValueError, "alpha must be > 0"),
        ({"alpha": float("nan")}, ValueError, "alpha must be finite"),
        ({"alpha": "1"}, TypeError, "alpha must be a real number"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    args = {"name": "mlu", "depth": 4, "hidden": 2, "dim": 3, "alpha": 1.0} | kwargs
    with pytest.raises(error, match=match):
        Parameterization(**args)
