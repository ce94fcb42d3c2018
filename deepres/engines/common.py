"""What every engine shares: the checkpoint policy and the segment layout."""

from __future__ import annotations

import math

__all__ = ["resolve_checkpoint_every", "segments"]


def resolve_checkpoint_every(depth: int, checkpoint_every: int | str | None) -> int:
    """Turn a ``checkpoint_every`` option into a segment length k ≥ 1.

    Args:
        depth: number of layers L.
        checkpoint_every: ``None`` (keep h before every layer: k = 1), an int
            k ≥ 1 (keep h every k layers and recompute each segment in the
            backward pass; k need not divide L, k > L means one segment), or
            ``"sqrt"`` (k = ⌈√L⌉, which minimizes the (L/k + k)·B·D numbers
            kept).

    Returns:
        The segment length k.
    """
    if checkpoint_every is None:
        return 1
    if isinstance(checkpoint_every, str):
        if checkpoint_every != "sqrt":
            raise ValueError(
                f"checkpoint_every must be None, a positive int or 'sqrt'; got {checkpoint_every!r}"
            )
        return max(1, math.ceil(math.sqrt(depth)))
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int):
        raise TypeError(
            "checkpoint_every must be None, a positive int or 'sqrt'; "
            f"got {type(checkpoint_every).__name__} {checkpoint_every!r}"
        )
    if checkpoint_every < 1:
        raise ValueError(
            f"checkpoint_every must be None, a positive int or 'sqrt'; got {checkpoint_every!r}"
        )
    return checkpoint_every


def segments(depth: int, every: int) -> list[tuple[int, int]]:
    """The [start, stop) layer ranges of the checkpoint segments, first to last.

    Segment i starts at layer i·k from the checkpoint h_{i·k}; the last one may
    be shorter when k does not divide L.
    """
    return [(start, min(start + every, depth)) for start in range(0, depth, every)]
