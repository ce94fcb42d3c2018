"""The shapes study's configuration (the ``shapes`` preset) and its units of work.

:class:`ShapesConfig` says everything ``deepres study --preset shapes`` does;
:meth:`ShapesConfig.units` cuts it into units, each one result file in the store:

* ``{"kind": "shapes_ref", "rep": r, "draw": k, ...}``: one draw of the reference
  network (the largest of the study) of repetition r;
* ``{"kind": "shapes_point", "rep": r, "depth": L, "hidden": M, "dim": D, ...}``: R
  replicas of one (L, M, D) of repetition r (a shape shared by two sweeps is one unit).

Each unit's seeds derive from its content, so units run in any order, on any worker
(:mod:`deepres.study.shapes.measure`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from deepres.study.shapes.network import STEP_IMPLS
from deepres.study.shared.data import ConfigFieldError, bad_network_field, unit_task_name

__all__ = ["SWEEPS", "ShapesConfig", "ShapesConfigError", "shapes_unit_work"]

#: The sweeps: error vs D at fixed (L, M), vs M at fixed (L, D), and along the two P families.
SWEEPS: tuple[str, ...] = ("dim", "width", "balanced", "contrast")


class ShapesConfigError(ConfigFieldError):
    """A bad :class:`ShapesConfig` field; ``field`` names it."""


def _positive_ints(name: str, values: Any, *, allow_empty: bool = False) -> list[int]:
    if not isinstance(values, (list, tuple)) or (not values and not allow_empty):
        raise ShapesConfigError(name, f"must be a {'' if allow_empty else 'non-empty '}list of ints ≥ 1; "
                                      f"got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ShapesConfigError(name, f"must hold ints ≥ 1; got {values!r}")
    return [int(v) for v in values]


@dataclass
class ShapesConfig:
    """Everything the shapes study does (defaults: the ``shapes`` preset; docs/study.md, "All shapes").

    Attributes (defaults in brackets):
        task: ["memorize"] (the companion paper's memorization task; its
            former name "paper" is accepted). samples: N [10]. seed: of the data and of
            every draw [0].
        repetitions: draws of the coupled W_E, W_U (the data stay) [3].
        activation: ["tanh"]. alpha: α of ``mlu`` [1.0].
        eta: η in deepres's convention, w ← w − η·(L·M·D/α²)·∂loss/∂w [0.2 = 1/d_in].
        steps: K [15]. record_steps: steps at which the errors are measured [10, 15].
        dtype: ["float32"]. step: gradient-step implementation, ``"inplace"`` or ``"engine"``
            (:mod:`deepres.study.shapes.network`) ["inplace"].
        reference: (L, M, D) of the reference network [50, 2000, 2000].
        reference_draws: independent (u, v) draws averaged into the reference, ≥ 2 [10].
        dim_fixed: (L, M) of the sweep in D [50, 100]. dims: its D [8, 16, ..., 1024, 2000].
        width_fixed: (L, D) of the sweep in M [50, 128]. widths: its M [4, 8, ..., 1024, 2000].
        scales: s of the two P families [1, 1.5, 2, 3, 4, 6, 8]. balanced_base: (L0, M0, D0) of the
            balanced family L = L0·s, M = M0·s³, D = D0·s² [2, 8, 4].
        contrast_dim: the fixed D of the contrast family (its L, M are the balanced family's) [16].
        replicas: R (u, v) draws per shape and repetition [8].
        bootstrap: draws per fit [1000]. level: CI coverage [0.95].
        ref_ratio: a point enters a fit only where the reference's error ≤ ratio × its error [1/3].
    """

    task: str = "memorize"
    samples: int = 10
    seed: int = 0
    repetitions: int = 3
    activation: str = "tanh"
    alpha: float = 1.0
    eta: float = 0.2
    steps: int = 15
    record_steps: list[int] = field(default_factory=lambda: [10, 15])
    dtype: str = "float32"
    step: str = "inplace"
    reference: list[int] = field(default_factory=lambda: [50, 2000, 2000])
    reference_draws: int = 10
    dim_fixed: list[int] = field(default_factory=lambda: [50, 100])
    dims: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128, 256, 512, 1024, 2000])
    width_fixed: list[int] = field(default_factory=lambda: [50, 128])
    widths: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2000])
    scales: list[float] = field(default_factory=lambda: [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0])
    balanced_base: list[int] = field(default_factory=lambda: [2, 8, 4])
    contrast_dim: int = 16
    replicas: int = 8
    bootstrap: int = 1000
    level: float = 0.95
    ref_ratio: float = 1 / 3

    def __post_init__(self) -> None:
        for name in ("samples", "repetitions", "steps", "replicas", "contrast_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ShapesConfigError(name, f"must be an int ≥ 1; got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ShapesConfigError("seed", f"must be an int; got {self.seed!r}")
        if isinstance(self.reference_draws, bool) or not isinstance(self.reference_draws, int) \
                or self.reference_draws < 2:
            raise ShapesConfigError("reference_draws", f"must be an int ≥ 2 (its own error is their spread); "
                                                       f"got {self.reference_draws!r}")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 2:
            raise ShapesConfigError("bootstrap", f"must be an int ≥ 2; got {self.bootstrap!r}")
        for name in ("alpha", "eta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ShapesConfigError(name, f"must be a finite number > 0; got {value!r}")
        if not 0 < self.level < 1:
            raise ShapesConfigError("level", f"must be in (0, 1); got {self.level!r}")
        if not 0 < self.ref_ratio <= 1:
            raise ShapesConfigError("ref_ratio", f"must be in (0, 1]; got {self.ref_ratio!r}")
        if (bad := bad_network_field(self.task, self.activation, self.dtype)) is not None:
            raise ShapesConfigError(*bad)
        if self.step not in STEP_IMPLS:
            raise ShapesConfigError("step", f"must be one of {STEP_IMPLS}; got {self.step!r}")
        self.record_steps = sorted(set(_positive_ints("record_steps", self.record_steps)))
        if self.record_steps[-1] > self.steps:
            raise ShapesConfigError("record_steps",
                                    f"must be ≤ steps = {self.steps}; got {self.record_steps!r}")
        for name, size in (("reference", 3), ("dim_fixed", 2), ("width_fixed", 2), ("balanced_base", 3)):
            values = _positive_ints(name, getattr(self, name))
            if len(values) != size:
                raise ShapesConfigError(name, f"must hold {size} ints; got {getattr(self, name)!r}")
            setattr(self, name, values)
        self.dims = _positive_ints("dims", self.dims, allow_empty=True)
        self.widths = _positive_ints("widths", self.widths, allow_empty=True)
        if not isinstance(self.scales, (list, tuple)) or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < math.inf
                for s in self.scales):
            raise ShapesConfigError("scales", f"must be a list of numbers > 0; got {self.scales!r}")
        self.scales = [float(s) for s in self.scales]
        too_wide = [s for s in self.shapes() if s[2] > self.reference[2]]
        if too_wide:
            raise ShapesConfigError("reference", f"D = {self.reference[2]} must be ≥ every D of the sweeps "
                                                 f"(errors compare the first D coordinates); got shapes "
                                                 f"(L, M, D) {too_wide[:3]}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sweep_shapes(self) -> dict[str, list[tuple[int, int, int]]]:
        """The (L, M, D) of every sweep (:data:`SWEEPS`), in order."""
        base_l, base_m, base_d = self.balanced_base

        def family(dim: int | None) -> list[tuple[int, int, int]]:
            return [(max(1, round(base_l * s)), max(1, round(base_m * s**3)),
                     dim if dim is not None else max(1, round(base_d * s**2))) for s in self.scales]

        return {"dim": [(self.dim_fixed[0], self.dim_fixed[1], d) for d in self.dims],
                "width": [(self.width_fixed[0], m, self.width_fixed[1]) for m in self.widths],
                "balanced": family(None), "contrast": family(self.contrast_dim)}

    def shapes(self) -> list[tuple[int, int, int]]:
        """Every distinct (L, M, D) of the sweeps, in order of first appearance."""
        return list(dict.fromkeys(s for shapes in self.sweep_shapes().values() for s in shapes))

    def _common(self) -> dict[str, Any]:
        # A unit spells the task as results were first stored (shared.data.unit_task_name).
        return {"task": unit_task_name(self.task), "samples": self.samples, "seed": self.seed,
                "activation": self.activation,
                "alpha": float(self.alpha), "eta": float(self.eta), "steps": self.steps,
                "record_steps": list(self.record_steps), "dtype": self.dtype, "step": self.step,
                "dim_max": self.reference[2]}

    def reference_units(self, rep: int) -> list[dict[str, Any]]:
        """The reference draws of repetition ``rep``."""
        depth, hidden, dim = self.reference
        return [{"kind": "shapes_ref", "rep": rep, "draw": k, "depth": depth, "hidden": hidden, "dim": dim,
                 "replicas": 1} | self._common() for k in range(self.reference_draws)]

    def point_unit(self, rep: int, shape: tuple[int, int, int]) -> dict[str, Any]:
        """The unit of one (L, M, D) of repetition ``rep``."""
        depth, hidden, dim = shape
        return {"kind": "shapes_point", "rep": rep, "depth": depth, "hidden": hidden, "dim": dim,
                "replicas": self.replicas} | self._common()

    def units(self) -> list[dict[str, Any]]:
        """Every unit: per repetition, the reference draws, then one unit per distinct shape."""
        return [unit for rep in range(self.repetitions)
                for unit in [*self.reference_units(rep), *(self.point_unit(rep, s) for s in self.shapes())]]


def shapes_unit_work(unit: dict[str, Any]) -> float:
    """A unit's work in multiply-adds (for the estimate and the progress bar).

    Each of the K+1 forward passes and K backward passes of an (L, M, D) network with
    R replicas costs about 2·R·L·M·D·N (forward) and 4·R·L·M·D·N (backward with the
    recomputed forward) multiply-adds; drawing the 2·R·L·M·D normal entries of u, v
    costs about 150 multiply-adds each.

    Example:
        >>> shapes_unit_work({"replicas": 1, "depth": 2, "hidden": 3, "dim": 4, "samples": 10, "steps": 1})
        9120
    """
    # NOTE: measured on the 2-core CPU (one thread, load 1.7): the reference (L = 50, M = D = 2000)
    # took 1.22 s a step, about 10¹⁰ multiply-adds a second, and 5.9 s to draw its 4·10⁸ entries.
    size = unit["replicas"] * unit["depth"] * unit["hidden"] * unit["dim"]
    passes = 2 * (unit["steps"] + 1) + 4 * unit["steps"]
    return int(size * (unit["samples"] * passes + 300))
