"""Console vtermnos the guest may give in either order: a range that equals any value in it.

Linux makes a console in two kinds of context: inside probe for a controller without
MULTIPORT (add_port(portdev, 0)), and in a control workqueue item (CONSOLE_PORT) for a
MULTIPORT controller.  When one reset makes consoles in both, they interleave: on 6.1
init_port_console reads pdrvdata.next_vtermno, may reschedule inside hvc_alloc (kzalloc,
hvc_structs_mutex) and only then increments it, so the order varies run to run and two
consoles can even get the same number.  Observed on Debian 12's 6.1 (vser1 max_ports 1,
the virtconsole on vser0, vser2 max_ports 1): 2,1,3 / 1,3,2 / 1,1,3 / 1,1,2 across
identical reboots and rmmod/insmod.  Upstream replaced the counter with an IDA ("virtio_console:
Introduce an ID allocator for virtual console numbers", whose message shows the same
duplicates in debugfs); the order still races there.  What stays fixed: each of the k
consoles of that reset gets a number in 1..k, and the next console gets k+1.  The model
predicts that range, and the diff accepts any value in it.
"""

from __future__ import annotations


class VtermRange:
    """Any vtermno from ``low`` to ``high`` inclusive (see the module docstring).

    Not a dataclass on purpose: the snapshot diff flattens dataclasses field by field, and a
    range must be compared as one value."""

    __slots__ = ("high", "low")

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high

    def __eq__(self, other: object) -> bool:
        """An int equals the range when it lies in it; a range only the same range."""
        if isinstance(other, VtermRange):
            return (self.low, self.high) == (other.low, other.high)
        if isinstance(other, int) and not isinstance(other, bool):
            return self.low <= other <= self.high
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.low, self.high))

    def __lt__(self, other: int) -> bool:
        """Some value of the range is below ``other`` (what "is it negative?" asks)."""
        return self.low < other

    def __repr__(self) -> str:
        return f"{self.low}..{self.high}"


#: A console's vtermno as the model predicts it.
Vtermno = int | VtermRange
