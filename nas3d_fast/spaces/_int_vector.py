"""Reading an encoding's integers before its positions are range-checked, so that a space can give
its own message for a bad value (``level 6 outside 2..5``) before ``check_vector``'s generic one."""

from __future__ import annotations

from collections.abc import Sequence

from .base import ArchError


def integers(vector: Sequence, space: str) -> list[int]:
    """``vector`` as a list of ints (integral floats accepted, as ``check_vector`` does); no range check."""
    try:
        values = [int(v) for v in vector]
    except (TypeError, ValueError) as exc:
        raise ArchError(f"{space}: the encoding must be a sequence of integers ({exc})") from exc
    for i, (v, w) in enumerate(zip(values, vector)):
        if v != w:
            raise ArchError(f"{space}: position {i}: {w!r} is not an integer")
    return values
