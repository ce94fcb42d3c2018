"""Seeded synthetic regression tasks for the studies, a loader for user tensors, and the fixed
embedding and readout every network of a study shares.

Every task is a pair (x, y) of float tensors, (N, d_in) and (N, d_out), built from
a seed so that a study is reproducible and every network of a sweep sees the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepres._checks import check_positive_int, check_tensor
from deepres.activations import check_activation
from deepres.study.shared.store import read_torch_file
from deepres.study.shared.sweep import derived_seed

__all__ = ["TASKS", "TASK_ALIASES", "ConfigFieldError", "Task", "bad_network_field", "coupling_weights",
           "load_task", "make_task", "paper_task", "task_name", "teacher_task", "unit_task", "unit_task_name"]

#: Names of the tasks: ``"memorize"`` (:func:`paper_task`, the companion paper's pure
#: memorization of Gaussian targets) and ``"teacher"`` (:func:`teacher_task`).
TASKS: tuple[str, ...] = ("memorize", "teacher")

#: Former names, still accepted: ``"paper"`` was renamed ``"memorize"``, since it is also
#: the name of a study preset.
TASK_ALIASES: dict[str, str] = {"paper": "memorize"}

# A unit dict keeps the name a task had when results were first stored: a unit's key (its
# result file) and the seeds derived from it hash the unit's contents, so the stored results
# still resume and every computation stays the same.
_UNIT_NAMES = {"memorize": "paper"}


def task_name(name: str) -> str:
    """The task's name in :data:`TASKS` (a former name, :data:`TASK_ALIASES`, is mapped).

    Raises:
        ValueError: not a task name.

    Example:
        >>> task_name("paper")
        'memorize'
    """
    name = TASK_ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {name!r}")
    return name


def unit_task_name(name: str) -> str:
    """How a unit dict spells task ``name``: the name it had when results were first stored.

    Example:
        >>> unit_task_name("memorize"), unit_task_name("teacher")
        ('paper', 'teacher')
    """
    name = task_name(name)
    return _UNIT_NAMES.get(name, name)


@dataclass(frozen=True)
class Task:
    """A regression data set: inputs ``x`` (N, d_in), targets ``y`` (N, d_out), and its name."""

    x: torch.Tensor
    y: torch.Tensor
    name: str

    @property
    def in_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.y.shape[1])


class ConfigFieldError(ValueError):
    """A bad field of a study's config: ``field`` names it, ``detail`` says what is wrong with it.

    The message is ``"FIELD DETAIL"``; a command line names the option that set the field
    from ``field`` (never by reading the message).

    Example:
        >>> error = ConfigFieldError("replicas", "must be ≥ 2; got 1")
        >>> str(error), error.field
        ('replicas must be ≥ 2; got 1', 'replicas')
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name} {message}")
        self.field = name
        self.detail = message


def bad_network_field(task: str, activation: str, dtype: str) -> tuple[str, str] | None:
    """The first bad one of a study config's ``task``, ``activation`` and ``dtype``, or None.

    Args:
        task: one of :data:`TASKS` (or a former name, :data:`TASK_ALIASES`).
            activation: a name of :mod:`deepres.activations`.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        ``(field, what is wrong with it)``, for the config's own error type; None if all three are good.

    Example:
        >>> bad_network_field("memorize", "tanh", "float16")
        ('dtype', "must be 'float32' or 'float64'; got 'float16'")
    """
    if TASK_ALIASES.get(task, task) not in TASKS:
        return "task", f"must be one of {TASKS}; got {task!r}"
    try:
        check_activation(activation)
    except (TypeError, ValueError) as error:
        return "activation", str(error)
    if dtype not in ("float32", "float64"):
        return "dtype", f"must be 'float32' or 'float64'; got {dtype!r}"
    return None


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; got {type(seed).__name__} {seed!r}")
    return torch.Generator().manual_seed(seed)


def _inputs(seed: int, samples: int, in_features: int, out_features: int,
            ) -> tuple[torch.Generator, torch.Tensor]:
    """Check the sizes; the seeded generator and the first draw, x (N, d_in) in float64."""
    check_positive_int(samples, "samples")
    check_positive_int(in_features, "in_features")
    check_positive_int(out_features, "out_features")
    gen = _generator(seed)
    return gen, torch.randn(samples, in_features, generator=gen, dtype=torch.float64)


def paper_task(seed: int = 0, *, samples: int = 10, in_features: int = 5, out_features: int = 5,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Task:
    """The companion paper's task: x and y with i.i.d. N(0, 1) entries (pure memorization).

    Args:
        seed: seed of the draw. Default 0.
        samples: N. Default 10. in_features: d_in. Default 5. out_features: d_out. Default 5.
        dtype: Default float32. device: Default CPU.

    Returns:
        A :class:`Task` with x (N, d_in) and y (N, d_out).

    Example:
        >>> task = paper_task(0)
        >>> task.x.shape, task.y.shape
        (torch.Size([10, 5]), torch.Size([10, 5]))
    """
    gen, x = _inputs(seed, samples, in_features, out_features)
    y = torch.randn(samples, out_features, generator=gen, dtype=torch.float64)
    return Task(x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype), "memorize")


def teacher_task(seed: int = 0, *, samples: int = 10, in_features: int = 5, out_features: int = 5,
                 hidden: int = 32, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Task:
    """A teacher-network regression: y = B tanh(A x / √d_in) / √hidden, x with N(0, 1) entries.

    The targets are a smooth function of the inputs of unit scale (A and B have
    N(0, 1) entries), so a network can fit them by learning features rather than
    memorizing noise.

    Args:
        seed: seed of the draw (teacher and inputs). Default 0.
        samples: N. Default 10. in_features: d_in. Default 5. out_features: d_out. Default 5.
        hidden: width of the teacher's hidden layer. Default 32.
        dtype: Default float32. device: Default CPU.

    Returns:
        A :class:`Task`.

    Example:
        >>> teacher_task(1, samples=20).y.shape
        torch.Size([20, 5])
    """
    check_positive_int(hidden, "hidden")
    gen, x = _inputs(seed, samples, in_features, out_features)
    a = torch.randn(hidden, in_features, generator=gen, dtype=torch.float64)
    b = torch.randn(out_features, hidden, generator=gen, dtype=torch.float64)
    y = torch.tanh(x @ a.T / math.sqrt(in_features)) @ b.T / math.sqrt(hidden)
    return Task(x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype), "teacher")


def make_task(name: str, seed: int = 0, **options: object) -> Task:
    """Build a task by name: ``"memorize"`` (:func:`paper_task`) or ``"teacher"`` (:func:`teacher_task`).

    A former name (:data:`TASK_ALIASES`, e.g. ``"paper"``, as unit dicts spell it) is accepted.

    Example:
        >>> make_task("memorize", 3).name
        'memorize'
    """
    name = task_name(name)
    if name == "memorize":
        return paper_task(seed, **options)  # type: ignore[arg-type]
    if name == "teacher":
        return teacher_task(seed, **options)  # type: ignore[arg-type]
    raise ValueError(f"task must be one of {TASKS}; got {name!r}")


def load_task(source: str | Path | tuple[torch.Tensor, torch.Tensor], *,
              dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Task:
    """Wrap the user's own data as a :class:`Task`.

    Args:
        source: a pair (x, y) of tensors, (N, d_in) and (N, d_out); or the path of a
            file written by ``torch.save`` holding such a pair or a dict with keys
            ``"x"`` and ``"y"`` (loaded safely: a file that holds anything but tensors
            and plain containers is refused, see
            :func:`deepres.study.shared.store.read_torch_file`).
        dtype: converted to this dtype. Default float32. device: Default CPU.

    Returns:
        A :class:`Task` named ``"user"``.

    Example:
        >>> load_task((torch.randn(8, 3), torch.randn(8, 2))).out_features
        2
    """
    if isinstance(source, (str, Path)):
        loaded = read_torch_file(Path(source))  # refuses code in the file, and says so in our words
        if isinstance(loaded, dict):
            if "x" not in loaded or "y" not in loaded:
                raise ValueError(f"the file {source} must hold a dict with keys 'x' and 'y'; "
                                 f"got keys {sorted(loaded)}")
            loaded = (loaded["x"], loaded["y"])
        source = loaded
    if not isinstance(source, (tuple, list)) or len(source) != 2:
        raise TypeError(f"source must be a path or a pair (x, y) of tensors; got {type(source).__name__}")
    x = check_tensor(source[0], "x")
    y = check_tensor(source[1], "y")
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have shapes (N, d_in) and (N, d_out) with the same N; "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    return Task(x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype), "user")


def coupling_weights(in_features: int, out_features: int, dim: int, seed: int, *,
                     dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared fixed embedding W_E (D, d_in) ~ N(0, 1/d_in) and readout W_U (D, d_out) ~ N(0, d_out).

    Drawn from ``seed`` alone (in float64, then converted), so every network of a
    study with the same (D, seed) gets the same pair whatever its L, M, dtype.

    Example:
        >>> we, wu = coupling_weights(5, 5, 8, seed=0)
        >>> we.shape, wu.shape
        (torch.Size([8, 5]), torch.Size([8, 5]))
    """
    gen = torch.Generator().manual_seed(seed)
    embed = torch.randn(dim, in_features, generator=gen, dtype=torch.float64) / math.sqrt(in_features)
    readout = torch.randn(dim, out_features, generator=gen, dtype=torch.float64) * math.sqrt(out_features)
    return embed.to(device=device, dtype=dtype), readout.to(device=device, dtype=dtype)


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def unit_task(unit: dict[str, Any], device: torch.device | str | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The data and the shared weights of a study's unit: x, y, W_E, W_U.

    Args:
        unit: a unit dict with ``task``, ``seed``, ``samples``, ``dim`` and ``dtype``
            (``"float32"`` or ``"float64"``). device: Default None: the CPU.

    Returns:
        x (N, d_in), y (N, d_out), embed (D, d_in), readout (D, d_out), in the unit's dtype.

    Example:
        >>> x, y, embed, readout = unit_task({"task": "paper", "seed": 0, "samples": 6, "dim": 4,
        ...                                   "dtype": "float64"})
        >>> x.shape, embed.shape, embed.dtype
        (torch.Size([6, 5]), torch.Size([4, 5]), torch.float64)
    """
    dtype = _DTYPES[unit["dtype"]]
    task = make_task(unit["task"], unit["seed"], samples=unit["samples"], dtype=dtype, device=device)
    embed, readout = coupling_weights(task.in_features, task.out_features, unit["dim"],
                                      derived_seed("coupling", unit["seed"], unit["dim"]),
                                      dtype=dtype, device=device)
    return task.x, task.y, embed, readout
