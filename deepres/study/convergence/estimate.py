"""How long a study will take: a cost model per kind of unit, scaled by probes run on this machine.

:func:`model_seconds` predicts a unit's wall time on the 2-core reference CPU from its
shape: a fixed cost per layer (or solver stage) and step, plus one proportional to
the arithmetic of that layer (replicas × width × samples × D for a ResNet layer,
particles × samples × D for a solver stage):

    t = c0 + steps · layers · (a + b · work)

with (c0, a, b) per kind of unit, fitted to units timed on the reference CPU
(:data:`MODEL`). The machine a study runs on is another (or the same one, under
another load), so :func:`calibrate` times one *probe* per kind before the study
starts (the kind's median unit, cut to a few steps and one particle set) and
scales that kind's model by measured/predicted. :func:`estimate` sums the scaled
model over the units to run; the study prints it before any work starts, saves it
with the results (``study.json`` → ``estimate``) next to the measured time, and its
progress bar counts the same scaled seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from deepres.study.convergence.units import run_unit

__all__ = ["MODEL", "calibrate", "estimate", "format_seconds", "model_seconds", "probe_unit", "unit_bytes"]

#: Per kind: (c0 [s], a [s per layer-step], b [s per layer-step per unit of work]) on the 2-core
#: reference CPU (one torch thread, load 2–3). NOTE: read off units timed there: a ResNet layer-step
#: took 1.0 ms at R·M·N·D = 2·10⁴ and 2.5 ms at 3·10⁵ (R = 512, N = 10, D = 4, M = 1…16), 7 ms at
#: 1.3·10⁶ (D = 16); an RK4 stage of the limit 2.9 ms at K·N·D = 6.6·10⁵; a float64 lazy layer-step
#: 6 ms at L = 16, M = 4, R = 16 and 12 ms at L = 64, M = 8, R = 32, its α-free limit twice that.
#: The timings scatter by 2× with the machine's load: the calibration rescales each kind anyway.
MODEL: dict[str, tuple[float, float, float]] = {
    "resnet": (0.05, 9.0e-4, 1.2e-8),
    "limit": (0.1, 5.0e-4, 3.5e-9),
    "lazy": (0.1, 5.0e-3, 5.0e-7),
    "lazy_limit": (0.1, 1.0e-2, 1.0e-6),
}

_STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}
#: A probe's predicted duration on the reference CPU: long enough to time, short enough to
#: keep the calibration to a few seconds.
_PROBE_SECONDS = 0.3


def _layers_and_work(unit: dict[str, Any]) -> tuple[float, float]:
    kind = unit["kind"]
    samples, dim = unit["samples"], unit["dim"]
    if kind == "limit":
        layers = unit["sets"] * unit["grid_steps"] * _STAGES[unit["solver"]]
        return layers, unit["particles"] * samples * dim
    if kind in ("resnet", "lazy", "lazy_limit"):
        return unit["depth"], unit["replicas"] * unit["hidden"] * samples * dim
    raise ValueError(f"unit kind must be 'resnet', 'limit', 'lazy' or 'lazy_limit'; got {kind!r}")


def model_seconds(unit: dict[str, Any]) -> float:
    """Predicted wall time of ``unit`` on the reference CPU, in seconds (see the module docstring).

    Example:
        >>> unit = {"kind": "resnet", "depth": 64, "hidden": 4, "replicas": 512, "samples": 10,
        ...         "dim": 4, "steps": 20}
        >>> 0 < model_seconds(unit) < model_seconds(unit | {"depth": 128})
        True
    """
    layers, work = _layers_and_work(unit)
    c0, a, b = MODEL[unit["kind"]]
    return c0 + max(unit["steps"], 1) * layers * (a + b * work)


def probe_unit(unit: dict[str, Any]) -> dict[str, Any]:
    """``unit`` cut down to about :data:`_PROBE_SECONDS` on the reference CPU: fewer steps, one set."""
    probe = dict(unit)
    if probe["kind"] == "limit":
        probe["sets"] = 1
    layers, work = _layers_and_work(probe)
    _, a, b = MODEL[probe["kind"]]
    per_step = layers * (a + b * work)
    steps = int(min(max(probe["steps"], 1), max(1, round(_PROBE_SECONDS / per_step))))
    probe["steps"] = steps
    probe["record_steps"] = [0, steps]
    return probe


def calibrate(units: Sequence[dict[str, Any]], *, device: torch.device | str | None = None,
              backend: str = "auto") -> dict[str, dict[str, Any]]:
    """Time one probe per kind of ``units`` on this machine; scale the model by measured/predicted.

    The probe of a kind is its median unit (by :func:`model_seconds`) cut down by
    :func:`probe_unit`; it runs twice and the second run is timed (the first pays
    one-time costs: allocations, lazy imports). Nothing is stored.

    Args:
        units: the units to run. device, backend: as for :func:`deepres.study.convergence.units.run_unit`.

    Returns:
        Per kind: ``probe`` (its unit), ``seconds`` (measured), ``model_seconds`` and
        ``factor`` = seconds / model_seconds.
    """
    out: dict[str, dict[str, Any]] = {}
    kinds = sorted({u["kind"] for u in units})
    for kind in kinds:
        members = sorted((u for u in units if u["kind"] == kind), key=model_seconds)
        probe = probe_unit(members[(len(members) - 1) // 2])
        run_unit(probe, device=device, backend=backend)
        start = time.perf_counter()
        run_unit(probe, device=device, backend=backend)
        seconds = time.perf_counter() - start
        predicted = model_seconds(probe)
        out[kind] = {"probe": probe, "seconds": seconds, "model_seconds": predicted,
                     "factor": seconds / predicted}
    return out


def estimate(units: Sequence[dict[str, Any]], calibration: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The predicted wall time of running ``units`` one after the other on the calibrated machine.

    Returns:
        ``seconds`` (total), ``by_kind`` ({kind: {"units", "seconds"}}) and ``factors``
        ({kind: factor}).
    """
    by_kind: dict[str, dict[str, float]] = {}
    for unit in units:
        entry = by_kind.setdefault(unit["kind"], {"units": 0, "seconds": 0.0})
        entry["units"] += 1
        entry["seconds"] += model_seconds(unit) * calibration[unit["kind"]]["factor"]
    return {"seconds": sum(e["seconds"] for e in by_kind.values()), "by_kind": by_kind,
            "factors": {k: v["factor"] for k, v in calibration.items()}}


def format_seconds(seconds: float) -> str:
    """``1 h 02 min``, ``12 min 30 s`` or ``45 s``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def unit_bytes(unit: dict[str, Any]) -> float:
    """An upper estimate of a unit's peak memory in bytes, from its sizes (for
    :func:`deepres.study.shared.memory.check_unit_memory`).

    Counted, in the unit's dtype (float64 for the lazy sweep): for a ResNet, its R·L·M·D
    weights eight times (u and v, their gradients, the copies that measure how far they
    moved) and its activations R·L·N·(D + M) three times (kept for the backward pass);
    for a limit, each set's nodes·K·D particles six times and its nodes·N·K field
    evaluations twice; for the lazy sweep, twelve copies of the weights (the ODE, its
    tangent model, their gradients) and four of the activations.

    Example:
        >>> unit = {"kind": "resnet", "dtype": "float32", "replicas": 512, "depth": 100000,
        ...         "hidden": 1024, "dim": 64, "samples": 10, "steps": 20, "record_steps": [0, 20]}
        >>> unit_bytes(unit) > 1e14
        True
    """
    kind, samples, dim = unit["kind"], unit["samples"], unit["dim"]
    if kind == "limit":
        itemsize = 4 if unit["dtype"] == "float32" else 8
        nodes = 2 * unit["grid_steps"] + 1  # rk4's; euler and midpoint have fewer
        particles = unit["particles"]
        per_set = 6 * nodes * particles * dim + 2 * nodes * samples * particles
        return float(itemsize * unit["sets"] * per_set)
    itemsize = 8 if kind in ("lazy", "lazy_limit") or unit["dtype"] == "float64" else 4
    weights = unit["replicas"] * unit["depth"] * unit["hidden"] * dim
    activations = unit["replicas"] * unit["depth"] * samples * (dim + unit["hidden"])
    if kind == "resnet":
        records = len(unit["record_steps"]) * unit["replicas"] * samples * (dim + 5)
        losses = (unit["steps"] + 1) * unit["replicas"]
        return float(itemsize * (8 * weights + 3 * activations + records + losses))
    return float(itemsize * (12 * weights + 4 * activations))
