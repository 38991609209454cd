"""A flag the model cannot decide: it equals both True and False.

Used where the real outcome depends on something outside the model's reach, e.g. how many
bytes the host kernel charges a socket for a write (``host_socket.py``), so that a prediction
can be honest about the band in which either answer is right, as ``VtermRange`` is for
console numbers.  Not a bool subclass on purpose: a caller that branches on it must decide.
"""

from __future__ import annotations

from typing import Final


class Either:
    """True or False, whichever the real system shows (see the module docstring).

    Not a dataclass: the snapshot diff flattens dataclasses field by field."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Either | bool):
            return True
        return NotImplemented

    def __hash__(self) -> int:
        return hash("either")

    def __repr__(self) -> str:
        return "either"

    def __bool__(self) -> bool:
        raise TypeError("Either is neither true nor false: compare it, do not branch on it")


EITHER: Final = Either()

#: A flag as the model predicts it: decided, or EITHER.
MaybeBool = bool | Either
