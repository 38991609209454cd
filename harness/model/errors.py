"""The one error type of the model and the exact texts it carries.

A runner matches ``expect_error`` as a substring of ``text`` (harness.errors.OperationFailed,
shared with the real system's failures), so ``text`` is QEMU's ``error_setg`` message where
QEMU reports the failure and the errno name where the guest kernel does.  Sources: QEMU
hw/char/virtio-serial-bus.c (realize, seed lines 732-753), hw/char/virtio-console.c
(virtconsole_realize) and Linux drivers/char/virtio_console.c.
"""

from __future__ import annotations

from harness.errors import OperationFailed

BUS = "virtio-serial-bus: "


class ModelError(OperationFailed):
    """A predicted failure: ``text`` is QEMU's message or an errno name such as "EBUSY"."""


def port_exists_at_id(nr: int) -> str:
    return f"{BUS}A port already exists at id {nr}"


def port_exists_by_name(name: str) -> str:
    return f"{BUS}A port already exists by name {name}"


MAX_PORTS_REACHED = f"{BUS}Maximum port limit for this device reached"


def out_of_range(max_ports: int) -> str:
    return f"{BUS}Out-of-range port id specified, max. allowed: {max_ports - 1}"


NR0_RESERVED = (
    "Port number 0 on virtio-serial devices reserved for virtconsole devices for "
    "backward compatibility."
)
MAX_PORTS_NOT_SPECIFIED = "Maximum number of serial ports not specified"


def max_supported(limit: int) -> str:
    return f"maximum ports supported: {limit}"


UINT32_MAX = 2**32 - 1


def expects_uint32(prop: str) -> str:
    """QEMU's property parser (observed, QEMU 7.2: -device virtio-serial-pci,max_ports=-1)."""
    return f"Parameter '{prop}' expects uint32_t"


def duplicate_device_id(dev_id: str) -> str:
    return f"Duplicate device ID '{dev_id}'"


def device_not_found(dev_id: str) -> str:
    return f"Device '{dev_id}' not found"


def bus_not_found(bus: str) -> str:
    """Named as given to device_add: the harness passes bus=<controller>.0 (observed, QEMU 7.2)."""
    return f"Bus '{bus}.0' not found"


MIGRATION_FAILED = "load of migration failed: Invalid argument"
MIGRATION_TRUNCATED = "load of migration failed: Input/output error"
#: The device part ended before the section did (another ports_map word count): virtio_load
#: goes on reading the rest of the virtio state out of step; what it then trips on depends on
#: the values it reads (ring indices from guest RAM): its VQ size check, -1 (strerror EPERM,
#: "Operation not permitted", QEMU 7.2 here), or the section footer check (EINVAL, "Missing
#: section footer", QEMU 10.0.13 here). Refused either way; the reason is not predictable.
MIGRATION_MISALIGNED = "load of migration failed"

# errno names reported by the guest kernel (or the host socket for host-side operations)
EBUSY = "EBUSY"
ENXIO = "ENXIO"
EAGAIN = "EAGAIN"
ENODEV = "ENODEV"
ESPIPE = "ESPIPE"
EBADF = "EBADF"
ENOENT = "ENOENT"
ENOTCONN = "ENOTCONN"
EISCONN = "EISCONN"
ECONNREFUSED = "ECONNREFUSED"
KILLED = "KILLED"
