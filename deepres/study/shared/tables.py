"""The CSV tables beside every study's ``study.json``: one writer for all of them.

Each study decides its rows (:mod:`deepres.study.convergence.report`,
:mod:`deepres.study.phase.report`, :mod:`deepres.study.shapes.report`); this writes
them, with JSON-safe values (NaN and infinities become empty cells).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepres.study.shared.report import json_safe

__all__ = ["write_csv"]


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as a CSV table to ``path``, one column per name.

    Args:
        path: the file. rows: one dict per row.
        names: the columns, in order. Default None: every key of the rows, in the
            order they first appear.

    Returns:
        ``path``, as a Path.

    Example:
        >>> import tempfile
        >>> path = write_csv(Path(tempfile.mkdtemp()) / "t.csv", [{"a": 1}, {"a": 2, "b": float("nan")}])
        >>> path.read_text().splitlines()
        ['a,b', '1,', '2,']
    """
    if names is None:
        names = []
        for row in rows:
            names += [k for k in row if k not in names]
    path = Path(path)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(names))
        writer.writeheader()
        writer.writerows(json_safe(list(rows)))
    return path
