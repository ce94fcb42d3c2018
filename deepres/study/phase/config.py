"""The phase study's configuration: the grid of points, the depths and dimensions, the step sizes.

:class:`PhaseConfig` says everything ``deepres study --preset phase`` does; its
defaults are the ``phase`` preset (design and measurements: docs/study.md,
"Phase diagram"); :meth:`PhaseConfig.units` cuts it into units of work, one per
(diagram, point, L or D), each run by :func:`deepres.study.phase.measure.run_phase_unit`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from deepres.study.shared.data import ConfigFieldError, bad_network_field, task_name, unit_task_name

__all__ = ["MAX_EXPONENT", "PhaseConfig", "PhaseConfigError"]

#: The largest size of a point's coordinate: they are exponents of L or D, and L^β for
#: β ≫ 10 overflows float64 long before it means anything.
MAX_EXPONENT = 10.0


def _grid(firsts: list[float], line: Any) -> list[list[float]]:
    return [[x, round(line(x) + offset, 12)] for x in firsts for offset in (-0.25, 0.0, 0.25)]


def _default_points() -> list[list[float]]:
    # β < 1/2 (one point on the line: the fluctuation at initialization grows), then β = 1/2 ... 5/4
    # on the line γ = 2β − 1 and a quarter above and below it.
    return [[0.25, -0.5], *_grid([0.5, 0.75, 1.0, 1.25], lambda b: 2 * b - 1)]


def _default_dim_points() -> list[list[float]]:
    return _grid([0.25, 0.5, 0.75], lambda d: 1 - 2 * d)


class PhaseConfigError(ConfigFieldError):
    """A bad :class:`PhaseConfig` field; ``field`` names it."""


@dataclass
class PhaseConfig:
    """Everything the phase study does (defaults: the ``phase`` preset).

    Attributes (defaults in brackets):
        task: ["memorize"] (see :data:`deepres.study.shared.data.TASKS`). samples: N [10].
        seed: of data, embedding, weights [0].
        depths: L of the depth diagram [16, 32, 64, 128, 256]. hidden: its M [4]. dim: its D [4].
        points: its (β, γ) [(1/4, −1/2), and β ∈ {1/2, 3/4, 1, 5/4} with γ = 2β − 1 + {−1/4, 0, 1/4}].
        alpha: α [1.0]. replicas: R per (point, L) [64].
        first_eta: the first η tried for the first step, halved until the step is linear [0.01].
        linearity_tolerance: |change(η)/change(η/2)/2 − 1| allowed [0.05]. max_halvings: [30].
        eta: η of the K steps [0.5]. steps: K [10].
        dims: D of the dimension diagram, [] to skip it [32, 64, 128, 256].
        dim_depth, dim_hidden: its fixed L and M [64, 16]. dim_replicas: its R [32].
        dim_points: its (δ, λ) [δ ∈ {1/4, 1/2, 3/4} with λ = 1 − 2δ + {−1/4, 0, 1/4}].
        dim_steps: K steps in the dimension diagram (first-step exponents classify) [0].
        tolerance: τ of the classification rule [0.125]. bootstrap: draws per fit [400].
        level: CI coverage [0.95]. activation: ["tanh"]. dtype: ["float64"].
    """

    task: str = "memorize"
    samples: int = 10
    seed: int = 0
    depths: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    hidden: int = 4
    dim: int = 4
    points: list[list[float]] = field(default_factory=_default_points)
    alpha: float = 1.0
    replicas: int = 64
    first_eta: float = 0.01
    linearity_tolerance: float = 0.05
    max_halvings: int = 30
    eta: float = 0.5
    steps: int = 10
    dims: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    dim_depth: int = 64
    dim_hidden: int = 16
    dim_replicas: int = 32
    dim_points: list[list[float]] = field(default_factory=_default_dim_points)
    dim_steps: int = 0
    tolerance: float = 0.125
    bootstrap: int = 400
    level: float = 0.95
    activation: str = "tanh"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        def ints(name: str, values: Any, low: int) -> None:
            if not isinstance(values, (list, tuple)) or any(
                    isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
                raise PhaseConfigError(name, f"must be a list of ints ≥ {low}; got {values!r}")

        for name, low in (("depths", 1), ("dims", 1)):
            ints(name, getattr(self, name), low)
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise PhaseConfigError(name, f"must not repeat a value; got {getattr(self, name)!r}")
        if len(set(self.depths)) < 2:
            raise PhaseConfigError("depths", f"must hold two different L or more; got {self.depths!r}")
        if self.dims and len(set(self.dims)) < 2:
            raise PhaseConfigError("dims", f"must be empty or hold two different D or more; "
                                           f"got {self.dims!r}")
        for name in ("samples", "hidden", "dim", "dim_depth", "dim_hidden"):
            ints(name, [getattr(self, name)], 1)
        for name in ("replicas", "dim_replicas", "bootstrap"):  # a spread, a CI
            ints(name, [getattr(self, name)], 2)
        for name in ("steps", "dim_steps", "max_halvings", "seed"):
            ints(name, [getattr(self, name)], 0)
        for name in ("points", "dim_points"):
            points = getattr(self, name)
            if not isinstance(points, (list, tuple)) or any(
                    len(p) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                           and abs(v) <= MAX_EXPONENT for v in p)
                    for p in points):
                raise PhaseConfigError(name, f"must be a list of pairs of numbers in [-{MAX_EXPONENT:g}, "
                                             f"{MAX_EXPONENT:g}]; got {points!r}")
            if len({tuple(p) for p in points}) != len(points):
                raise PhaseConfigError(name, f"must not repeat a point; got {points!r}")
        if not self.points and not (self.dims and self.dim_points):
            raise PhaseConfigError("points", "and dim_points/dims are all empty: nothing to measure")
        for name in ("alpha", "first_eta", "eta", "tolerance", "linearity_tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise PhaseConfigError(name, f"must be a finite number > 0; got {value!r}")
        if not 0 < self.level < 1:
            raise PhaseConfigError("level", f"must be in (0, 1); got {self.level!r}")
        if (bad := bad_network_field(self.task, self.activation, self.dtype)) is not None:
            raise PhaseConfigError(*bad)
        self.task = task_name(self.task)
        self.points = [[float(a), float(b)] for a, b in self.points]
        self.dim_points = [[float(a), float(b)] for a, b in self.dim_points]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def units(self) -> list[dict[str, Any]]:
        """One unit per (diagram, point, L or D)."""
        base = {"kind": "phase", "task": unit_task_name(self.task), "samples": self.samples,
                "seed": self.seed,
                "alpha": float(self.alpha), "first_eta": float(self.first_eta),
                "linearity_tolerance": float(self.linearity_tolerance), "max_halvings": self.max_halvings,
                "eta": float(self.eta), "activation": self.activation, "dtype": self.dtype}
        units = [base | {"diagram": "depth", "point": list(p), "depth": depth, "hidden": self.hidden,
                         "dim": self.dim, "replicas": self.replicas, "steps": self.steps}
                 for p in self.points for depth in self.depths]
        units += [base | {"diagram": "dim", "point": list(p), "depth": self.dim_depth,
                          "hidden": self.dim_hidden, "dim": dim, "replicas": self.dim_replicas,
                          "steps": self.dim_steps}
                  for p in self.dim_points for dim in self.dims]
        return units
