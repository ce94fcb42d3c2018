"""Figures derived from the result rows: ratios to the baseline and growth exponents in L."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

__all__ = ["add_ratios", "fit_growth", "growth_fits"]


def _case_key(case: dict[str, object], without: str | None = None) -> str:
    return json.dumps({k: v for k, v in case.items() if k != without}, sort_keys=True)


def fit_growth(depths: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of log(value) against log(depth): the growth exponent in L.

    Returns None with fewer than two distinct depths or a non-positive value.

    Example:
        >>> round(fit_growth([64, 128, 256], [1.0, 2.0, 4.0]), 6)
        1.0
    """
    if len(set(depths)) < 2 or any(v is None or not v > 0 for v in values):
        return None
    slope, _ = np.polyfit(np.log(np.asarray(depths, float)), np.log(np.asarray(values, float)), 1)
    return float(slope)


def add_ratios(rows: list[dict[str, object]], baseline: str) -> None:
    """Fill each measured row's ratios to the baseline's row of the same case.

    ``speedup_vs_baseline`` = baseline median / median; ``peak_ratio_vs_baseline``
    and ``saved_ratio_vs_baseline`` = the baseline's bytes / the row's (how many
    times less memory).
    """
    base = {_case_key(r["case"]): r for r in rows  # type: ignore[arg-type]
            if r["provider"] == baseline and r["status"] == "ok"}
    for row in rows:
        ref = base.get(_case_key(row["case"]))  # type: ignore[arg-type]
        if row["status"] != "ok" or ref is None:
            continue
        row["speedup_vs_baseline"] = ref["time"]["median"] / row["time"]["median"]  # type: ignore[index]
        for key, ratio in (("peak_bytes", "peak_ratio_vs_baseline"),
                           ("saved_bytes", "saved_ratio_vs_baseline")):
            if ref[key] and row[key]:
                row[ratio] = ref[key] / row[key]  # type: ignore[operator]


def growth_fits(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Growth exponents in L of time, peak and saved bytes, per provider and case without L.

    Returns:
        ``[{"provider", "case" (without depth), "depths", "time_exponent",
        "peak_bytes_exponent", "saved_bytes_exponent"}]`` for every provider measured
        at two depths or more.
    """
    groups: dict[tuple[str, str], list[dict[str, object]]] = {}
    for row in rows:
        if row["status"] == "ok":
            key = (str(row["provider"]), _case_key(row["case"], without="depth"))  # type: ignore[arg-type]
            groups.setdefault(key, []).append(row)
    fits = []
    for (provider, case_key), members in groups.items():
        depths = [m["case"]["depth"] for m in members]  # type: ignore[index]
        if len(set(depths)) < 2:
            continue
        fit: dict[str, object] = {"provider": provider, "case": json.loads(case_key),
                                  "depths": sorted(depths)}
        for metric, get in (("time", lambda m: m["time"]["median"]),
                            ("peak_bytes", lambda m: m["peak_bytes"]),
                            ("saved_bytes", lambda m: m["saved_bytes"])):
            fit[f"{metric}_exponent"] = fit_growth(depths, [get(m) for m in members])
        fits.append(fit)
    return fits
