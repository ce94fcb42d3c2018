"""The studies' forward-mode products through the fused engines against the plain reference route.

The lazy units (linearized training: ``torch.func.vjp`` and ``jvp`` through the
stack) and the phase units (the exact linear response J·Δθ by ``torch.func.jvp``)
took these products from ``backend="reference"`` before the engines had
forward-mode rules. This script runs units of the ``quick`` study and of the
phase preset both ways on the same inputs, float64, and prints the largest
relative difference of every result and the time of each run:

    python bench/study_fused_route.py            # the quick study's lazy units, 4 phase units
    python bench/study_fused_route.py --lazy 2 --phase 2

"Reference route" reruns the unit with the transforms' stack calls sent to
``backend="reference"`` (what the code did before); everything else is the same.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

import deepres.study.convergence.lazy as lazy
import deepres.study.phase.measure as phase_measure
from deepres.study.convergence.presets import preset
from deepres.study.convergence.units import run_unit
from deepres.study.phase.config import PhaseConfig
from deepres.study.phase.family import phase_features


@contextlib.contextmanager
def reference_route() -> Iterator[None]:
    """The units' transform calls of the stack through ``backend="reference"``, as before."""
    stack, features = lazy.residual_stack, phase_measure.phase_features

    def lazy_stack(*args: Any, **kwargs: Any) -> torch.Tensor:
        return stack(*args, **(kwargs | {"backend": "reference"}))

    def phase(h0, u, v, scaling, **kwargs):
        # Inside torch.func.jvp the weights are functorch-wrapped: that call used the reference.
        if torch._C._functorch.is_functorch_wrapped_tensor(u):
            kwargs = kwargs | {"backend": "reference"}
        return phase_features(h0, u, v, scaling, **kwargs)

    lazy.residual_stack, phase_measure.phase_features = lazy_stack, phase
    try:
        yield
    finally:
        lazy.residual_stack, phase_measure.phase_features = stack, features


def _difference(new: dict[str, Any], old: dict[str, Any]) -> float:
    worst = 0.0
    for key, value in old.items():
        if key == "seconds" or not isinstance(value, torch.Tensor | float) or isinstance(value, bool):
            continue
        a, b = torch.as_tensor(new[key], dtype=torch.float64), torch.as_tensor(value, dtype=torch.float64)
        scale = b.norm().item()
        worst = max(worst, (a - b).norm().item() / (scale if scale > 0 else 1.0))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lazy", type=int, default=None, help="number of lazy units (default: all of quick)")
    parser.add_argument("--phase", type=int, default=4, help="number of phase units (default 4)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    study = preset("quick")
    units = [u for u in study.units() if u["kind"] == "lazy"][: args.lazy]
    units += [u for u in PhaseConfig(depths=[16, 32]).units() if u["diagram"] == "depth"][: args.phase]
    run = {"lazy": run_unit, "phase": lambda unit: phase_measure.run_phase_unit(unit)}
    totals = {("lazy", "fused"): 0.0, ("lazy", "reference"): 0.0, ("phase", "fused"): 0.0,
              ("phase", "reference"): 0.0}
    worst = 0.0
    for unit in units:
        start = time.perf_counter()
        new = run[unit["kind"]](unit)
        fused = time.perf_counter() - start
        with reference_route():
            start = time.perf_counter()
            old = run[unit["kind"]](unit)
            ref = time.perf_counter() - start
        diff = _difference(new, old)
        worst = max(worst, diff)
        totals[unit["kind"], "fused"] += fused
        totals[unit["kind"], "reference"] += ref
        where = f"alpha={unit['alpha']}" if unit["kind"] == "lazy" else f"point={unit['point']}"
        print(f"{unit['kind']:5s} L={unit['depth']:<4d} {where:22s} max rel diff {diff:.2e}   "
              f"fused {fused:6.2f} s   reference {ref:6.2f} s")
    for kind in ("lazy", "phase"):
        fused, ref = totals[kind, "fused"], totals[kind, "reference"]
        print(f"{kind}: fused {fused:.2f} s, reference route {ref:.2f} s")
    print(f"largest relative difference over every result: {worst:.2e}")


if __name__ == "__main__":
    main()
