"""The tests' own machinery: the error metric and the Hypothesis profile."""

import math
import os

import pytest
import torch
from hypothesis import settings

from tests.helpers import relative_error


def test_relative_error_of_a_zero_reference_is_the_absolute_error():
    zero = torch.zeros(3, dtype=torch.float64)
    assert relative_error(zero, zero) == 0.0
    assert relative_error(torch.tensor([3.0, 4.0, 0.0]), zero) == pytest.approx(5.0)
    assert math.isnan(relative_error(torch.tensor([math.nan, 0.0, 0.0]), zero))


def test_relative_error_is_relative_to_the_reference():
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert relative_error(torch.tensor([3.0, 4.5]), ref) == pytest.approx(0.5 / 5.0)


def test_relative_error_refuses_to_broadcast():
    with pytest.raises(ValueError, match="one shape"):
        relative_error(torch.zeros(2, 1), torch.zeros(2))


def test_hypothesis_runs_derandomized_without_a_database(pytestconfig):
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.database is None
    explicit = (pytestconfig.getoption("--hypothesis-profile", default=None)
                or pytestconfig.getoption("--hypothesis-seed", default=None) is not None
                or os.environ.get("HYPOTHESIS_PROFILE"))
    if explicit:
        pytest.skip("a Hypothesis profile or seed was chosen for this run")
    assert settings.get_current_profile_name() == "ci" and settings.default.derandomize
