"""``study.json``, the report every study writes: JSON-safe values, written atomically.

``study.json`` is written through a uniquely named temporary file and renamed
into place, so two writers never clash and a reader never sees half a file;
NaN and infinities become ``null``. The tables, plots and text summary of each
study are its own (:mod:`deepres.study.convergence.report`,
:mod:`deepres.study.phase.report`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from deepres.study.shared.files import atomic_write

__all__ = ["json_safe", "require_matplotlib", "save_figure", "write_json", "write_study_json"]


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN/inf → None, numpy/tensor scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write ``report`` to ``path`` through a uniquely named temporary file (two writers never clash)."""
    text = json.dumps(json_safe(report), indent=1)
    atomic_write(path, lambda handle: handle.write(text.encode()))


def write_study_json(report: dict[str, Any], out: str | Path, written: list[Path]) -> list[Path]:
    """Write ``out/study.json``, after the study's other files ``written``; every path, ``study.json`` first.

    Args:
        report: the study's report. out: its folder. written: the files written before.

    Returns:
        ``[out/study.json, *written]``.
    """
    path = Path(out) / "study.json"
    write_json(report, path)
    return [path, *written]


def require_matplotlib() -> Any:
    """Import matplotlib with the Agg backend, or raise ImportError naming the ``deepres[plot]`` extra."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plots need matplotlib: install it with `pip install deepres[plot]` "
                          "(or pass --no-plots)") from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, *, dpi: int) -> None:
    """Save a matplotlib figure as PNG by the one rule of :mod:`deepres.study.shared.files` (atomic,
    never through a link).

    Args:
        fig: a matplotlib ``Figure``. path: the PNG to write. dpi: its resolution.
    """
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))
