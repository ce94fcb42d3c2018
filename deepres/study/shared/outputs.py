"""A study's report files: their provenance, CSV tables with sidecars, and whose files are in ``--out``.

* :func:`provenance` is what every report file carries: the preset, the full command
  line, the deepres version, the git commit (or ``"not a git checkout"``) and a digest
  of the configuration (:func:`config_digest`). ``study.json`` holds it under
  ``"provenance"``; each CSV table ``NAME.csv`` has a sidecar ``NAME.provenance.json``
  with it and the table's SHA-256 (:func:`write_csv`), so that the table itself stays
  plain CSV that any reader takes.
* :func:`check_outputs` runs before any work: a report file already in the output
  folder that a deepres study of the same configuration did not write (another
  configuration's, a hand-written or edited one, a link) is refused, unless the
  ``--replace`` option says to overwrite it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepres.benchmark.environment import environment
from deepres.study.shared.data import TASK_ALIASES
from deepres.study.shared.files import write_text
from deepres.study.shared.report import json_safe

__all__ = ["check_outputs", "config_digest", "provenance", "sidecar_path", "write_csv"]

NOT_A_CHECKOUT = "not a git checkout"


def config_digest(config: dict[str, Any], identity: dict[str, str]) -> str:
    """SHA-256 of a study's configuration and unit identity (canonical JSON): what makes two runs one study.

    Example:
        >>> len(config_digest({"depths": [4]}, {"backend": "auto", "device": "cpu"}))
        64
    """
    text = json.dumps(json_safe({"config": config, "unit_identity": identity}), sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def provenance(preset: str | None, config: dict[str, Any], identity: dict[str, str], *,
               argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Where a study's results come from.

    Args:
        preset: the preset's name (None: a configuration given through the Python API).
        config: the study's configuration dict. identity: its unit identity
            (:func:`deepres.study.shared.store.unit_identity`).
        argv: the full command line. Default: the interpreter and ``sys.argv``.

    Returns:
        ``{"preset", "command", "deepres_version", "git_commit", "git_dirty", "config_digest"}``;
        ``git_commit`` is ``"not a git checkout"`` when deepres does not run from one.

    Example:
        >>> p = provenance("quick", {}, {"backend": "auto", "device": "cpu"}, argv=["deepres", "study"])
        >>> p["preset"], p["command"]
        ('quick', 'deepres study')
    """
    env = environment([sys.executable, *sys.argv] if argv is None else argv)
    return {"preset": preset, "command": env["command"],
            "deepres_version": env["versions"]["deepres"],  # type: ignore[index]
            "git_commit": env["git_commit"] or NOT_A_CHECKOUT, "git_dirty": env["git_dirty"],
            "config_digest": config_digest(config, identity)}


def sidecar_path(table: Path) -> Path:
    """The provenance sidecar of a CSV table: ``NAME.csv`` → ``NAME.provenance.json``."""
    return table.with_name(f"{table.stem}.provenance.json")


def write_csv(path: Path, rows: list[dict[str, Any]], fieldnames: Sequence[str] | None = None,
              source: dict[str, Any] | None = None) -> list[Path]:
    """Write a CSV table and, with ``source`` (a :func:`provenance`), its sidecar; both atomically.

    The one writer of every study's tables (JSON-safe values: NaN and infinities
    become empty cells).

    Args:
        path: the table's file. rows: one dict per row.
        fieldnames: the columns, in order. Default None: every key of the rows, in
            the order they first appear.
        source: the study's provenance, written to the sidecar with the table's
            SHA-256. Default None: no sidecar.

    Returns:
        The paths written: the table, then its sidecar.

    Example:
        >>> import tempfile
        >>> (path,) = write_csv(Path(tempfile.mkdtemp()) / "t.csv", [{"a": 1}, {"a": 2, "b": float("nan")}])
        >>> path.read_text().splitlines()
        ['a,b', '1,', '2,']
    """
    if fieldnames is None:
        fieldnames = []
        for row in rows:
            fieldnames += [k for k in row if k not in fieldnames]
    path = Path(path)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames))
    writer.writeheader()
    writer.writerows(json_safe(rows))
    text = buffer.getvalue()
    write_text(path, text)
    if source is None:
        return [path]
    side = sidecar_path(path)
    record = source | {"file": path.name, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    write_text(side, json.dumps(json_safe(record), indent=1) + "\n")
    return [path, side]


def _same_config(stored: Any, config: dict[str, Any]) -> bool:
    """Whether a stored ``config`` is ``config``, a task under a former name counting as its new one."""
    if not isinstance(stored, dict):
        return False
    if stored.get("task") in TASK_ALIASES:  # written before the task was renamed
        stored = stored | {"task": TASK_ALIASES[stored["task"]]}
    return stored == json_safe(config)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_outputs(out: str | Path, tables: Sequence[str], config: dict[str, Any], identity: dict[str, str],
                  *, replace: bool, option: str = "--out") -> None:
    """Refuse to overwrite report files in ``out`` that no deepres study of this configuration wrote.

    ``study.json`` is this study's when it holds the same ``config`` (a task under its
    former name, :data:`deepres.study.shared.data.TASK_ALIASES`, counts as renamed) and
    ``unit_identity``; a table when its sidecar holds this configuration's digest and
    the table's SHA-256 (a table written before sidecars existed counts as this
    study's when ``study.json`` is, and has no ``provenance`` either). A link is never
    this study's.

    Args:
        out: the output folder. tables: the CSV tables the study writes (names).
        config, identity: as :func:`provenance`. replace: overwrite whatever is there.
        option: the flag of the folder, for the message. Default ``"--out"``.

    Raises:
        deepres.options.OptionError: a file is in the way and not ``replace``.
    """
    if replace:
        return
    from deepres.options import OptionError

    folder = Path(out)
    digest = config_digest(config, identity)
    report = folder / "study.json"
    stored = _read_json(report) if report.is_file() and not report.is_symlink() else None
    ours = (isinstance(stored, dict) and _same_config(stored.get("config"), config)
            and stored.get("unit_identity") == identity)
    legacy = ours and "provenance" not in stored  # type: ignore[operator]
    foreign = [] if ours or not (report.exists() or report.is_symlink()) else ["study.json"]
    for name in tables:
        table, side = folder / name, sidecar_path(folder / name)
        if not (table.exists() or table.is_symlink() or side.exists() or side.is_symlink()):
            continue
        record = _read_json(side) if side.is_file() and not side.is_symlink() else None
        if table.is_symlink() or side.is_symlink():
            foreign.append(name)
        elif isinstance(record, dict):
            try:
                same = hashlib.sha256(table.read_bytes()).hexdigest() == record.get("sha256")
            except OSError:
                same = False
            if record.get("config_digest") != digest or not same:
                foreign.append(name)
        elif not (legacy and not side.exists()):
            foreign.append(name)
    if foreign:
        verb = "was" if len(foreign) == 1 else "were"
        raise OptionError(option, str(out), f"{', '.join(foreign)} there {verb}"
                          " not written by a deepres study of this configuration (another configuration's, "
                          "edited, or a link); pass --replace to overwrite, or choose another --out")
