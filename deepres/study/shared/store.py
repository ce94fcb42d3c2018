"""The results store: one file per finished unit, written atomically, checked when read back.

See :mod:`deepres.study.convergence.sweep` for units and how a study runs them. A unit's result
is stored under a key made of the unit dict and of what the dict does not say but
the result depends on (:func:`unit_identity`: the stack backend and the device
type), so that a rerun with another backend or device never resumes from the
results of the first.
"""

from __future__ import annotations

import errno
import hashlib
import json
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deepres.functional import BACKENDS
from deepres.study.shared.files import UnsafeFileError, atomic_write

__all__ = ["RESULT_FORMAT", "CorruptResultError", "CorruptResultWarning", "ResultStore", "Schema",
           "read_torch_file", "result_problem", "unit_identity", "unit_key"]

#: The format of a stored result file, saved in each (``"format"``); a file without one is of
#: format 1 (written before the field existed: the same layout). A file of another format is
#: set aside and recomputed, as an unreadable one.
RESULT_FORMAT = 1

#: What a unit's result must hold: name → the tensor's shape (an int per axis, None for any
#: size) or ``"number"`` (an int or float).
Schema = dict[str, "tuple[int | None, ...] | str"]


def result_problem(result: dict[str, Any], schema: Schema) -> str | None:
    """What is wrong with a stored ``result`` against ``schema`` (None: nothing).

    Args:
        result: a unit's result dict. schema: see :data:`Schema`.

    Returns:
        None, or one sentence naming the first missing or misshapen entry.

    Example:
        >>> result_problem({"x": torch.zeros(3, 2), "seconds": 1.0}, {"x": (3, None), "seconds": "number"})
        >>> result_problem({"x": torch.zeros(3)}, {"x": (3, None)})
        'its x has shape (3,), not (3, any)'
    """
    for name, expected in schema.items():
        if name not in result:
            return f"it has no {name}"
        value = result[name]
        if expected == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"its {name} is a {type(value).__name__}, not a number"
            continue
        sizes = ", ".join("any" if n is None else str(n) for n in expected)
        shown = f"({sizes}{',' if len(expected) == 1 else ''})"
        if not isinstance(value, torch.Tensor):
            return f"its {name} is a {type(value).__name__}, not a tensor of shape {shown}"
        if value.dim() != len(expected) or any(
                n is not None and n != m for n, m in zip(expected, value.shape, strict=False)):
            return f"its {name} has shape {tuple(value.shape)}, not {shown}"
    return None


def unit_key(unit: dict[str, Any]) -> str:
    """A stable file-name-safe key for ``unit``: its kind and a digest of its canonical JSON."""
    text = json.dumps(unit, sort_keys=True, separators=(",", ":"))
    return f"{unit['kind']}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def unit_identity(device: torch.device | str | None = None, backend: str = "auto") -> dict[str, str]:
    """What a unit's result depends on beyond the unit dict: the stack backend and the device type.

    Args:
        device: where the units run. Default None: the CPU.
        backend: the stack backend, one of :data:`deepres.BACKENDS`. Default ``"auto"``.

    Returns:
        ``{"backend": backend, "device": device type}`` (``"cuda:1"`` → ``"cuda"``: devices of
        one type run the same code).

    Example:
        >>> unit_identity("cuda:1", "triton")
        {'backend': 'triton', 'device': 'cuda'}
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    return {"backend": backend, "device": torch.device("cpu" if device is None else device).type}


class CorruptResultWarning(UserWarning):
    """A stored result could not be read back; it was renamed to ``*.corrupt`` and its unit reruns."""


class CorruptResultError(ValueError):
    """A stored result could not be read back when it was needed (it was renamed to ``*.corrupt``)."""


class _Unreadable(Exception):
    pass


def _describe(error: BaseException) -> str:
    """Why torch.load failed, in our words: torch's own messages may recommend unsafe loading."""
    if isinstance(error, EOFError):
        return "the file is empty or cut short"
    if isinstance(error, pickle.UnpicklingError):
        return "the file is not a result file (the safe loader refused its contents)"
    if isinstance(error, RuntimeError):
        return "the file is not a complete torch archive (cut short or damaged)"
    return f"the file cannot be read ({type(error).__name__})"


def read_torch_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, whose refusals are worded by deepres.

    PyTorch's message for a file its safe loader refuses advises retrying with
    ``weights_only=False``, which runs whatever code the file holds: for a file from
    elsewhere that is the one thing not to do. The message here says what is wrong
    with the file instead.

    Args:
        path: a file written by ``torch.save``.

    Returns:
        Its contents (tensors, numbers, strings, lists, tuples and dicts only).

    Raises:
        OSError: the file cannot be opened or read.
        ValueError: it is not such a file, or holds anything else (the safe loader refused it).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "x.pt"
        >>> torch.save({"x": torch.ones(1)}, path)
        >>> read_torch_file(path)["x"].tolist()
        [1.0]
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:
        raise ValueError(f"{path}: {_describe(error)}; it was not loaded") from None


class ResultStore:
    """One file per finished unit under ``root/units/``, written atomically.

    Results are read back with ``torch.load(..., weights_only=True)`` (plain tensors,
    numbers, lists and dicts only) and checked: a file that cannot be read, that
    holds another unit, that is of another :data:`RESULT_FORMAT`, or whose result does
    not match the study's ``schema`` (hand-edited, or written by another deepres
    version) is renamed to ``<name>.corrupt`` with a
    :class:`CorruptResultWarning` (listed in :attr:`corrupt`), and counts as missing.

    Args:
        root: the study's output directory (created if missing).
        device: the device the results are computed on. Default None: the CPU.
        backend: the stack backend they are computed with. Default ``"auto"``.
            Both go into every result's key (:func:`unit_identity`), so results of
            another device type or backend are never read back as this store's.
        schema: ``schema(unit)`` → the :data:`Schema` of that unit's result, checked on
            every read. Default None: any dict.

    Example:
        >>> import tempfile
        >>> store = ResultStore(tempfile.mkdtemp())
        >>> unit = {"kind": "resnet", "depth": 4}
        >>> store.save(unit, {"x": torch.ones(2)})
        >>> store.has(unit), store.load(unit)["x"].tolist()
        (True, [1.0, 1.0])
    """

    def __init__(self, root: str | Path, *, device: torch.device | str | None = None,
                 backend: str = "auto", schema: Callable[[dict[str, Any]], Schema] | None = None) -> None:
        self.root = Path(root)
        self.units_dir = self.root / "units"
        if self.units_dir.is_symlink():
            # Results written there would land wherever the link points.
            raise UnsafeFileError(errno.ELOOP, "the results folder is a symbolic link; refusing to write "
                                               "through it", str(self.units_dir))
        self.units_dir.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.identity = unit_identity(device, backend)
        self.device, self.backend = device, backend
        #: The unreadable files found, ``{"file", "renamed_to", "reason"}`` each, in order.
        self.corrupt: list[dict[str, str]] = []

    def _stored_unit(self, unit: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(unit | {"identity": self.identity}))

    def path(self, unit: dict[str, Any]) -> Path:
        return self.units_dir / f"{unit_key(self._stored_unit(unit))}.pt"

    def _read(self, unit: dict[str, Any], path: Path) -> dict[str, Any]:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except OSError:
            raise  # cannot open or read the file at all (permissions, I/O): not the file's fault
        except Exception as error:  # torch's words may advise unsafe loading: ours instead
            raise _Unreadable(_describe(error)) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("result"), dict):
            raise _Unreadable("the file holds no result")
        if payload.get("unit") != self._stored_unit(unit):
            raise _Unreadable("the file holds the result of another unit")
        version = payload.get("format", 1)
        if version != RESULT_FORMAT:
            raise _Unreadable(f"the file is of result format {version!r}, written by another deepres "
                              f"version (this one reads format {RESULT_FORMAT})")
        if self.schema is not None:
            problem = result_problem(payload["result"], self.schema(unit))
            if problem is not None:
                raise _Unreadable(f"the file holds an incomplete result: {problem}")
        return payload["result"]

    def _set_aside(self, path: Path, reason: str) -> Path:
        """Rename an unreadable ``path`` to a free ``*.corrupt`` name, warn, and remember it."""
        target, index = path.with_name(f"{path.name}.corrupt"), 1
        while target.exists():
            target, index = path.with_name(f"{path.name}.{index}.corrupt"), index + 1
        path.rename(target)
        self.corrupt.append({"file": str(path), "renamed_to": str(target), "reason": reason})
        warnings.warn(f"unreadable result file {path}: {reason}; renamed to {target.name}, its unit will be "
                      "recomputed", CorruptResultWarning, stacklevel=3)
        return target

    def has(self, unit: dict[str, Any]) -> bool:
        """Whether a readable result of ``unit`` is stored (this reads and checks the file).

        An unreadable file is renamed to ``*.corrupt`` (see the class docstring), and
        the answer is False.
        """
        path = self.path(unit)
        if not path.is_file():
            return False
        try:
            self._read(unit, path)
        except _Unreadable as error:
            self._set_aside(path, str(error))
            return False
        return True

    def load(self, unit: dict[str, Any]) -> dict[str, Any]:
        """The stored result of ``unit``.

        Raises:
            FileNotFoundError: the unit has not finished.
            CorruptResultError: its file cannot be read back; it is renamed to
                ``*.corrupt`` first, so that a rerun recomputes the unit.
        """
        path = self.path(unit)
        if not path.is_file():
            raise FileNotFoundError(f"no stored result for the {unit.get('kind')} unit {unit_key(unit)} "
                                    f"(expected {path})")
        try:
            return self._read(unit, path)
        except _Unreadable as error:
            target = self._set_aside(path, str(error))
            raise CorruptResultError(f"unreadable result file {path}: {error}; renamed to {target.name}, "
                                     "rerun to recompute its unit") from None

    def failure_path(self, unit: dict[str, Any]) -> Path:
        return self.units_dir / f"{unit_key(self._stored_unit(unit))}.failed.json"

    def save_failure(self, unit: dict[str, Any], message: str) -> None:
        """Record that ``unit`` failed (atomically, as :meth:`save`); a later success clears it."""
        text = json.dumps({"unit": unit, "identity": self.identity, "error": message}, indent=1)
        atomic_write(self.failure_path(unit), lambda handle: handle.write(text.encode()))

    def failures(self) -> list[dict[str, Any]]:
        """The recorded failures of this store's identity, ``{"unit", "identity", "error"}`` each,
        oldest file name first. An unreadable record is renamed to ``*.corrupt`` and skipped
        (its unit has no result, so it runs again)."""
        found = []
        for path in sorted(self.units_dir.glob("*.failed.json")):
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict) or not isinstance(record.get("unit"), dict):
                    raise ValueError("no unit")
            except ValueError:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                self._set_aside(path, "the failure record is not valid JSON")
                continue
            if record.get("identity") == self.identity:
                found.append(record)
        return found

    def save(self, unit: dict[str, Any], result: dict[str, Any]) -> None:
        """Write ``result`` for ``unit``: to a temporary file in the same folder, then renamed.

        ``os.replace`` is atomic on one file system, so a reader (or a rerun after a
        kill) sees either no file or the whole file, never a partial one.
        """
        payload = {"unit": self._stored_unit(unit), "result": result, "format": RESULT_FORMAT}
        atomic_write(self.path(unit), lambda handle: torch.save(payload, handle), durable=True)
        self.failure_path(unit).unlink(missing_ok=True)
