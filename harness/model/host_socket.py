"""How much a stalled host's chardev socket takes before QEMU's write comes back short.

QEMU's virtio-console flush_buf writes one guest buffer (at most ``guest_write_chunk``,
32 KiB) per qemu_chr_fe_write; a short write throttles the port.  The host end is a unix
stream socket, and Linux's unix_stream_sendmsg takes a write (one skb up to 32 KiB + head)
while the bytes charged to the sender, each skb's *truesize*, are below ``sk_sndbuf``
(net.core.wmem_default, 212992 on Debian; QEMU sets no SO_SNDBUF).  Truesize is the data
plus the sk_buff and allocator rounding, so the byte count a socket takes depends on the
write sizes.  Measured on this project's host (Linux 6.x, a non-blocking socketpair, writes
of one size until EAGAIN):

    write size   1     100    1000   4096    10000   32768
    writes       278   278    93     44      17      7
    bytes        278   27800  93000  180224  170000  229376

i.e. a charge of 766 bytes for a 1-byte write, ~2290 for 1000, ~4840 for 4096, ~12500 for
10000, ~32.8 KiB for 32 KiB.  Rather than copy one kernel's slab sizes, the model bounds the
charge: at least the data plus a bare sk_buff (``CHARGE_MIN_OVERHEAD``), at most twice the
data plus ``CHARGE_MAX_OVERHEAD`` (kmalloc's power-of-two rounding at most doubles a linear
skb; a paged one rounds its pages).  A write the socket takes under the upper bound is
certain, one it refuses under the lower bound is certain, and in between the port's
throttle flag is ``EITHER``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Linux's default net.core.wmem_default (SK_WMEM_MAX); the plugin reads the host's value.
DEFAULT_SNDBUF = 212992
#: struct sk_buff alone, cache-aligned (232 bytes on x86_64 6.x, 256 with alignment).
CHARGE_MIN_OVERHEAD = 256
#: sk_buff + skb_shared_info + rounding on top of twice the data (see the module docstring).
CHARGE_MAX_OVERHEAD = 1024


def charge_bounds(nbytes: int) -> tuple[int, int]:
    """The least and the most truesize one write of ``nbytes`` is charged."""
    return nbytes + CHARGE_MIN_OVERHEAD, 2 * nbytes + CHARGE_MAX_OVERHEAD


@dataclass
class StalledSocket:
    """What QEMU wrote into the socket of a host that stopped reading: those bytes are the
    tail of the port's ``to_host`` that the host cannot read until it reads again."""

    nbytes: int = 0
    low: int = 0
    high: int = 0
    #: a write was taken that the real socket may have refused (the port may be throttled)
    unsure: bool = False

    def offer(self, nbytes: int, sndbuf: int) -> bool:
        """One chardev write of ``nbytes``: True when taken.  The model takes it unless it
        is refused for certain (the real socket refused it, or an earlier one, too)."""
        if self.low >= sndbuf:
            return False
        if self.high >= sndbuf:
            self.unsure = True
        low, high = charge_bounds(nbytes)
        self.nbytes += nbytes
        self.low += low
        self.high += high
        return True
