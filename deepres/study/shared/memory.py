"""Units too large for the machine, refused before any work: a memory estimate per unit.

Each study says how many bytes one of its units needs at its peak (the convergence
study's :func:`deepres.study.convergence.estimate.unit_bytes`, the phase study's
:func:`deepres.study.phase.measure.phase_unit_bytes`): an upper estimate from the
unit's sizes (weights, their gradients and copies, the activations kept for the
backward pass, the records), not a measurement. :func:`check_unit_memory` compares the
largest with the device's memory (the GPU's, or the machine's RAM) and refuses, on one
line naming the unit, what cannot fit; ``--allow-large-units`` skips the check (for an
estimate that is too pessimistic, or a machine that swaps).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["UnitTooLargeError", "check_unit_memory", "device_memory", "format_bytes"]


class UnitTooLargeError(ValueError):
    """A unit's memory estimate exceeds the device's memory."""

#: The unit fields that say its size, in the order the message names them.
_SIZE_FIELDS = ("depth", "hidden", "dim", "replicas", "particles", "grid_steps", "sets", "samples")


def format_bytes(count: float) -> str:
    """``count`` bytes in decimal units.

    Example:
        >>> format_bytes(13.4e12), format_bytes(512)
        ('13.4 TB', '512 B')
    """
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"


def device_memory(device: torch.device | str) -> int | None:
    """The memory of ``device`` in bytes: the GPU's total, or the machine's RAM; None if unknown.

    Example:
        >>> device_memory("cpu") > 0
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_unit_memory(units: Sequence[dict[str, Any]], unit_bytes: Callable[[dict[str, Any]], float],
                      device: torch.device | str, *, available: int | None = None,
                      option: str = "--allow-large-units") -> None:
    """Refuse the study if its largest unit cannot fit in ``device``'s memory.

    Args:
        units: the units to run. unit_bytes: a unit's estimated peak bytes.
        device: where they run. available: the memory to compare with. Default:
            :func:`device_memory` (no check where it is unknown).
        option: the flag that skips the check, for the message.

    Raises:
        UnitTooLargeError: naming the unit, the memory it needs and ``option``.

    Example:
        >>> check_unit_memory([{"kind": "demo", "depth": 4}], lambda unit: 1e3, "cpu", available=10**6)
    """
    available = device_memory(device) if available is None else available
    if available is None or not units:
        return
    largest = max(units, key=unit_bytes)
    needed = unit_bytes(largest)
    if needed <= available:
        return
    sizes = " ".join(f"{name}={largest[name]}" for name in _SIZE_FIELDS if name in largest)
    raise UnitTooLargeError(f"the {largest['kind']} unit {sizes} needs about {format_bytes(needed)} of "
                            f"memory, more than the {format_bytes(available)} of "
                            f"{torch.device(device).type}; "
                            f"make it smaller, or pass {option} to run it anyway")
