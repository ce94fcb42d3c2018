"""Study configurations: the full set of axes and options, and the named presets.

A :class:`StudyConfig` says everything a study does; :func:`StudyConfig.units`
cuts it into units of work (see :mod:`deepres.study.convergence.sweep`). Presets:

* ``quick`` — runs on a 2-core CPU in a few minutes and shows every rate: the
  fluctuation's −1/2 in L and in M, the bias's −1 in L, and the lazy α sweep.
  Its design (measured, see docs/study.md): D = 4, α = 1, η = 0.1, 20 GD steps on
  the companion paper's task (N = 10, d_in = d_out = 5); L ∈ {4, 8, ..., 128},
  M ∈ {1, 4, 16}; 512 replicas in antithetic pairs; the limit from 8 independent
  sets of 16384 particles (scrambled Sobol points in antithetic pairs) on a 16-step
  RK4 grid. About 35 s on the 2-core CPU.
* ``paper`` — the large sweep for a GPU: L up to 1024, M up to 64, D ∈ {4, 16},
  several α, more replicas and a finer limit.
* ``large`` — large L on the 2-core CPU (under 45 minutes there): L ∈ {16, 64, 256,
  1024}, M ∈ {1, 4, 16}, D ∈ {4, 8, 16}, 256 replicas, the limit from 4 sets of 16384
  particles; the α axis at (L, M) = (256, 4) for α from 0.5 to 32, fitted over [2, 16];
  the lazy sweep at (32, 4) for α up to 128.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from deepres.study.convergence.compare import SOLVERS
from deepres.study.shared.data import ConfigFieldError, bad_network_field, task_name, unit_task_name

__all__ = ["PRESETS", "StudyConfig", "StudyConfigError", "describe_presets", "preset"]


def _record_steps(steps: int, count: int) -> list[int]:
    """``count`` steps from 0 to ``steps`` (included), evenly spaced, unique."""
    if count <= 1 or steps == 0:
        return [steps]
    return sorted({round(i * steps / (count - 1)) for i in range(count)})


class StudyConfigError(ConfigFieldError):
    """A bad :class:`StudyConfig` field; ``field`` names it."""


@dataclass
class StudyConfig:
    """Every axis and option of a ResNet-vs-limit study.

    Attributes (defaults in brackets):
        task: ``"memorize"`` (the companion paper's task; its former name ``"paper"`` is
            accepted) or ``"teacher"`` ["memorize"]. samples: N [10].
        depths: L values [4, 8, 16, 32, 64, 128]. widths: M values [1, 4, 16]. dims: D values [4].
        alphas: α values [1.0]. etas: η values [0.1]. steps: GD step counts [20].
        seeds: data/embedding/limit seeds [0]. replicas: R per (L, M, ...) [512].
        antithetic: replicas in antithetic pairs (u, v), (u, −v) [True].
        particles: K per limit set [16384]. grid_steps: N [16]. limit_sets: independent
            particle sets averaged into the limit [8]. solver: ``"euler"``, ``"midpoint"``,
            ``"rk4"``; None means rk4 [None].
        particle_init: ``"sobol"`` or ``"antithetic"``; None means sobol [None].
        activation: ["tanh"]. dtype: ``"float32"`` or ``"float64"`` ["float32"].
        records: how many steps to record, evenly spaced from 0 to the last [5].
        alpha_axis: α values of the α axis, [] to skip [0.5, 1, 2, 4, 8, 16]: ResNets at one
            (L, M) (``alpha_axis_depth``, ``alpha_axis_hidden`` [64, 4]) for every α, for the
            fluctuation's rate in α (the fluctuation is the replicas' spread: no limit needed).
        alpha_fit: [low, high], the α range of the ``fluctuation_vs_alpha`` fit [2, 8]: where
            the bound's α/√(LM) term dominates at (64, 4) (see docs/study.md).
        lazy_alphas: α values of the lazy sweep, [] to skip [1, 2, 4, ..., 256].
        lazy_depth, lazy_hidden, lazy_replicas: shape of its networks [16, 4, 16].
        lazy_fit_min: the lazy-ODE distance is fitted from this α on, its asymptotic
            1/α² range [16].
        bootstrap: bootstrap draws per fit [400]. level: CI coverage [0.95].
        ref_ratio: a point enters a fit only if reference error ≤ ref_ratio × error [1/3].
        noise_ratio: a bias enters a fit only if it is ≥ noise_ratio × its replica
            standard error [3.0].
    """

    task: str = "memorize"
    samples: int = 10
    depths: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128])
    widths: list[int] = field(default_factory=lambda: [1, 4, 16])
    dims: list[int] = field(default_factory=lambda: [4])
    alphas: list[float] = field(default_factory=lambda: [1.0])
    etas: list[float] = field(default_factory=lambda: [0.1])
    steps: list[int] = field(default_factory=lambda: [20])
    seeds: list[int] = field(default_factory=lambda: [0])
    replicas: int = 512
    antithetic: bool = True
    particles: int = 16384
    grid_steps: int = 16
    limit_sets: int = 8
    solver: str | None = None
    particle_init: str | None = None
    activation: str = "tanh"
    dtype: str = "float32"
    records: int = 5
    alpha_axis: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    alpha_axis_depth: int = 64
    alpha_axis_hidden: int = 4
    alpha_fit: list[float] = field(default_factory=lambda: [2.0, 8.0])
    lazy_alphas: list[float] = field(default_factory=lambda: [float(2**i) for i in range(9)])
    lazy_depth: int = 16
    lazy_hidden: int = 4
    lazy_replicas: int = 16
    lazy_fit_min: float = 16.0
    bootstrap: int = 400
    level: float = 0.95
    ref_ratio: float = 1 / 3
    noise_ratio: float = 3.0

    def __post_init__(self) -> None:
        for name in ("depths", "widths", "dims", "steps", "seeds", "alphas", "etas"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not values:
                raise StudyConfigError(name, f"must be a non-empty list; got {values!r}")
        for name in ("depths", "widths", "dims"):
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in getattr(self, name)):
                raise StudyConfigError(name, f"must hold ints ≥ 1; got {getattr(self, name)!r}")
        if any(not isinstance(v, int) or v < 0 for v in self.steps):
            raise StudyConfigError("steps", f"must hold ints ≥ 0; got {self.steps!r}")
        for name in ("alphas", "etas", "lazy_alphas", "alpha_axis", "alpha_fit"):
            if any(not float(v) > 0 for v in getattr(self, name)):
                raise StudyConfigError(name, f"must hold numbers > 0; got {getattr(self, name)!r}")
        for name in ("depths", "widths", "dims", "alphas", "etas", "steps", "seeds", "lazy_alphas",
                     "alpha_axis"):
            values = list(getattr(self, name))
            if len(set(values)) != len(values):
                # A repeated value would run its units once but report every measurement twice,
                # or fit a line through two points at one x.
                raise StudyConfigError(name, f"must not repeat a value; got {values!r}")
        if len(self.alpha_fit) != 2 or not self.alpha_fit[0] < self.alpha_fit[1]:
            raise StudyConfigError("alpha_fit", f"must be [low, high] with low < high; "
                                                f"got {self.alpha_fit!r}")
        for name in ("alpha_axis_depth", "alpha_axis_hidden", "lazy_depth", "lazy_hidden", "lazy_replicas"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StudyConfigError(name, f"must be an int ≥ 1; got {value!r}")
        if not float(self.lazy_fit_min) > 0:
            raise StudyConfigError("lazy_fit_min", f"must be > 0; got {self.lazy_fit_min!r}")
        if self.antithetic and self.replicas % 2:
            raise StudyConfigError("replicas", f"must be even with antithetic pairs; got {self.replicas}")
        if self.replicas < 2:
            raise StudyConfigError("replicas", f"must be ≥ 2 (fluctuations need a spread); "
                                               f"got {self.replicas}")
        if self.particles < 2 or self.particles % 2:
            raise StudyConfigError("particles", f"must be even and ≥ 2 (antithetic pairs); "
                                                f"got {self.particles}")
        if self.grid_steps < 2:
            raise StudyConfigError("grid_steps", f"must be ≥ 2 (the grid check halves it); "
                                                 f"got {self.grid_steps}")
        if self.limit_sets < 2:
            raise StudyConfigError("limit_sets", f"must be ≥ 2 (their spread is the particle error); "
                                                 f"got {self.limit_sets}")
        if self.solver is not None and self.solver not in SOLVERS:
            raise StudyConfigError("solver", f"must be one of {SOLVERS} or None; got {self.solver!r}")
        if self.particle_init is not None and self.particle_init not in ("sobol", "antithetic"):
            raise StudyConfigError("particle_init", f"must be 'sobol', 'antithetic' or None; "
                                                    f"got {self.particle_init!r}")
        if (bad := bad_network_field(self.task, self.activation, self.dtype)) is not None:
            raise StudyConfigError(*bad)
        self.task = task_name(self.task)
        if self.lazy_alphas and self.lazy_hidden % 2:
            raise StudyConfigError("lazy_hidden", f"must be even (paired units); got {self.lazy_hidden}")
        if not 0 < self.ref_ratio <= 1:
            raise StudyConfigError("ref_ratio", f"must be in (0, 1]; got {self.ref_ratio!r}")

    @property
    def resolved_solver(self) -> str:
        """The solver the limit uses: the configured one, else rk4."""
        return self.solver if self.solver is not None else "rk4"

    @property
    def resolved_particle_init(self) -> str:
        """The limit's particle init: the configured one, else sobol."""
        return self.particle_init if self.particle_init is not None else "sobol"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"resolved_solver": self.resolved_solver,
                                           "resolved_particle_init": self.resolved_particle_init}

    def _base(self, seed: int, dim: int, alpha: float, eta: float, steps: int) -> dict[str, Any]:
        return {"task": unit_task_name(self.task), "samples": self.samples, "seed": seed, "dim": dim,
                "alpha": float(alpha), "eta": float(eta), "steps": steps, "activation": self.activation,
                "dtype": self.dtype,
                "record_steps": _record_steps(steps, self.records)}

    def groups(self) -> list[dict[str, Any]]:
        """One dict per (seed, D, α, η, steps): the settings shared by a limit and its ResNets."""
        return [self._base(seed, dim, alpha, eta, steps) for seed in self.seeds for dim in self.dims
                for alpha in self.alphas for eta in self.etas for steps in self.steps]

    def limit_unit(self, group: dict[str, Any], *, grid_check: bool = False) -> dict[str, Any]:
        """The limit unit of a group; with ``grid_check`` its one-set, half-grid check."""
        return group | {"kind": "limit", "particles": self.particles, "solver": self.resolved_solver,
                        "particle_init": self.resolved_particle_init,
                        "grid_steps": self.grid_steps // 2 if grid_check else self.grid_steps,
                        "sets": 1 if grid_check else self.limit_sets}

    def resnet_unit(self, group: dict[str, Any], depth: int, hidden: int) -> dict[str, Any]:
        return group | {"kind": "resnet", "depth": depth, "hidden": hidden, "replicas": self.replicas,
                        "antithetic": self.antithetic}

    def _others(self) -> list[tuple[int, int, float, int]]:
        """(seed, D, η, steps) of every group, without α (the α axis and the lazy sweep vary it)."""
        return [(seed, dim, eta, steps) for seed in self.seeds for dim in self.dims for eta in self.etas
                for steps in self.steps]

    def alpha_axis_units(self) -> list[dict[str, Any]]:
        """The α axis: ResNet units at (``alpha_axis_depth``, ``alpha_axis_hidden``), one per α.

        They are plain ``resnet`` units: one that the main grid also has is the same unit.
        """
        return [self.resnet_unit(self._base(seed, dim, alpha, eta, steps), self.alpha_axis_depth,
                                 self.alpha_axis_hidden)
                for seed, dim, eta, steps in self._others() for alpha in self.alpha_axis]

    def _lazy_shape(self) -> dict[str, Any]:
        # shared_weights: every α starts from the same weights (common random numbers); it also
        # keeps these units apart from stored ones that drew new weights at each α.
        return {"depth": self.lazy_depth, "hidden": self.lazy_hidden, "replicas": self.lazy_replicas,
                "dtype": "float64", "shared_weights": True}

    def lazy_units(self) -> list[dict[str, Any]]:
        """The α-sweep units (float64: the distances reach 1e-7)."""
        return [self._base(seed, dim, alpha, eta, steps) | {"kind": "lazy"}
                | self._lazy_shape()
                for seed, dim, eta, steps in self._others() for alpha in self.lazy_alphas]

    def lazy_limit_units(self) -> list[dict[str, Any]]:
        """The α → ∞ limit of each lazy sweep (d_∞): α-free, one per sweep; none without a sweep."""
        if not self.lazy_alphas:
            return []
        out = []
        for seed, dim, eta, steps in self._others():
            base = {k: v for k, v in self._base(seed, dim, 1.0, eta, steps).items() if k != "alpha"}
            out.append(base | {"kind": "lazy_limit"} | self._lazy_shape())
        return out

    def units(self) -> list[dict[str, Any]]:
        """Every unit of work of the study, each once."""
        out: list[dict[str, Any]] = []
        for group in self.groups():
            out.append(self.limit_unit(group))
            out.append(self.limit_unit(group, grid_check=True))
            out.extend(self.resnet_unit(group, depth, hidden)
                       for hidden in self.widths for depth in self.depths)
        out += self.alpha_axis_units() + self.lazy_units() + self.lazy_limit_units()
        unique: dict[str, dict[str, Any]] = {}
        for unit in out:
            unique.setdefault(json.dumps(unit, sort_keys=True), unit)
        return list(unique.values())


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {},
    "paper": {
        "depths": [8, 16, 32, 64, 128, 256, 512, 1024], "widths": [1, 4, 16, 64], "dims": [4, 16],
        "alphas": [1.0], "steps": [50], "replicas": 512, "particles": 65536, "grid_steps": 32,
        "limit_sets": 16, "lazy_alphas": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0], "lazy_depth": 64,
        "lazy_hidden": 8, "lazy_replicas": 32, "bootstrap": 1000,
    },
    # NOTE: sized with deepres.study.convergence.estimate's model to about 19 minutes of the 2-core CPU at
    # load 2–3 (the ResNets 15, the limits 2, the lazy sweeps 2), so that it ends within 45
    # minutes even when the machine runs twice slower; 4 depths a factor 4 apart cost a third
    # less than 7 a factor 2 apart, for fits over the same two and a half decades. The α axis
    # at L·M = 1024 follows the fluctuation's +1 from α = 2 to √(LM)/2 = 16 (measured local
    # slopes 0.86–1.02 there, 0.61 from 16 to 32).
    "large": {
        "depths": [16, 64, 256, 1024], "widths": [1, 4, 16], "dims": [4, 8, 16], "replicas": 256,
        "limit_sets": 4, "alpha_axis": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0], "alpha_axis_depth": 256,
        "alpha_axis_hidden": 4, "alpha_fit": [2.0, 16.0], "lazy_alphas": [float(2**i) for i in range(8)],
        "lazy_depth": 32, "lazy_hidden": 4, "lazy_replicas": 8,
    },
}


def preset(name: str, **overrides: Any) -> StudyConfig:
    """The named preset's :class:`StudyConfig`, with ``overrides`` applied.

    Example:
        >>> preset("quick", depths=[4, 8]).depths
        [4, 8]
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}; got {name!r}")
    return StudyConfig(**(PRESETS[name] | overrides))


def describe_presets() -> str:
    """What each preset contains, one line each (for ``deepres study --help``).

    Example:
        >>> describe_presets().splitlines()[0].startswith("quick: L 4,8,16")
        True
    """
    def values(items: list[Any]) -> str:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in items) or "none"

    lines = []
    for name in PRESETS:
        c = preset(name)
        lines.append(f"{name}: L {values(c.depths)}; M {values(c.widths)}; D {values(c.dims)}; α "
                     f"{values(c.alphas)}; {values(c.steps)} steps; R {c.replicas}; limit K {c.particles} × "
                     f"{c.limit_sets} sets, {c.grid_steps} {c.resolved_solver} steps; α axis "
                     f"{values(c.alpha_axis)} at L={c.alpha_axis_depth}, M={c.alpha_axis_hidden}; lazy α "
                     f"{values(c.lazy_alphas)} at L={c.lazy_depth}, M={c.lazy_hidden}")
    return "\n".join(lines)
