"""The virtio-serial control protocol at byte level, and a handshake simulator.

Header (virtio spec 5.3.6.2, seed struct virtio_console_control): le32 id, le16 event,
le16 value, optionally followed by a payload (PORT_NAME: the name; RESIZE: cols, rows).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from harness.model.behaviour import Behaviour

HEADER = struct.Struct("<IHH")
HEADER_SIZE = HEADER.size  # 8

DEVICE_READY = 0
PORT_ADD = 1
PORT_REMOVE = 2
PORT_READY = 3
CONSOLE_PORT = 4
RESIZE = 5
PORT_OPEN = 6
PORT_NAME = 7
EVENT_NAMES = {
    DEVICE_READY: "DEVICE_READY",
    PORT_ADD: "PORT_ADD",
    PORT_REMOVE: "PORT_REMOVE",
    PORT_READY: "PORT_READY",
    CONSOLE_PORT: "CONSOLE_PORT",
    RESIZE: "RESIZE",
    PORT_OPEN: "PORT_OPEN",
    PORT_NAME: "PORT_NAME",
}
#: VIRTIO_CONSOLE_BAD_ID: the id Linux puts in DEVICE_READY and QEMU's "no nr given".
BAD_ID = 0xFFFFFFFF

TO_DEVICE = "driver->device"
TO_DRIVER = "device->driver"


@dataclass(frozen=True)
class ControlMessage:
    id: int
    event: int
    value: int
    payload: bytes = b""

    def __str__(self) -> str:
        name = EVENT_NAMES.get(self.event, str(self.event))
        extra = f" {self.payload!r}" if self.payload else ""
        return f"{name}(id={self.id}, value={self.value}){extra}"


def encode(message: ControlMessage) -> bytes:
    return HEADER.pack(message.id, message.event, message.value) + message.payload


def decode(data: bytes) -> ControlMessage | None:
    """None for fewer than 8 bytes: QEMU ignores such a packet (seed lines 312-314)."""
    if len(data) < HEADER_SIZE:
        return None
    port_id, event, value = HEADER.unpack_from(data)
    return ControlMessage(port_id, event, value, bytes(data[HEADER_SIZE:]))


def port_name_message(port_id: int, name: str, behaviour: Behaviour) -> ControlMessage:
    """PORT_NAME as QEMU builds it: strlen(name) + 1 bytes, last one NUL (seed 358-368)."""
    raw = name.encode()
    if behaviour.port_name_trailing_nul:
        raw += b"\0"
    return ControlMessage(port_id, PORT_NAME, 1, raw)


@dataclass(frozen=True)
class Wire:
    """One control message as it crossed the control queues, in send order.  ``lost``: QEMU
    sent it while the guest's control receive queue had no free buffer, so it was dropped."""

    direction: str
    message: ControlMessage
    lost: bool = False


@dataclass
class DevicePort:
    id: int
    name: str | None
    is_console: bool = False
    host_connected: bool = False
    guest_connected: bool = False


@dataclass
class DriverPort:
    id: int
    name: str | None = None
    is_console: bool = False
    host_connected: bool = False
    guest_connected: bool = False


@dataclass
class DeviceControl:
    """QEMU's handle_control_message (seed lines 303-400, current QEMU the same)."""

    ports: list[DevicePort]
    behaviour: Behaviour = field(default_factory=Behaviour)
    errors: list[str] = field(default_factory=list)

    def find(self, port_id: int) -> DevicePort | None:
        return next((p for p in self.ports if p.id == port_id), None)

    def receive(self, data: bytes) -> list[ControlMessage]:
        """Handle one guest->host control buffer; return the messages sent back."""
        message = decode(data)
        if message is None:
            return []
        if message.event == DEVICE_READY:
            if not message.value:
                self.errors.append("Guest failure in adding device")
                return []
            return [ControlMessage(p.id, PORT_ADD, 1) for p in self.ports]
        port = self.find(message.id)
        if port is None:
            self.errors.append(f"Unexpected port id {message.id}")
            return []
        if message.event == PORT_READY:
            return self._port_ready(port, message.value)
        if message.event == PORT_OPEN:
            port.guest_connected = bool(message.value)
        return []

    def _port_ready(self, port: DevicePort, value: int) -> list[ControlMessage]:
        if not value:
            self.errors.append(f"Guest failure in adding port {port.id}")
            return []
        out = []
        if port.is_console:
            out.append(ControlMessage(port.id, CONSOLE_PORT, 1))
        if port.name is not None:
            out.append(port_name_message(port.id, port.name, self.behaviour))
        if port.host_connected:
            out.append(ControlMessage(port.id, PORT_OPEN, 1))
        return out


@dataclass
class DriverControl:
    """Linux handle_control_message for one virtio-serial device (multiport)."""

    max_nr_ports: int
    ports: dict[int, DriverPort] = field(default_factory=dict)

    def receive(self, data: bytes) -> list[ControlMessage]:
        message = decode(data)
        if message is None:
            return []
        port = self.ports.get(message.id)
        if port is None and message.event != PORT_ADD:
            return []  # "Invalid index in control packet": dropped
        if message.event == PORT_ADD:
            return self._port_add(port, message.id)
        assert port is not None
        return self._port_event(port, message)

    def _port_add(self, port: DriverPort | None, port_id: int) -> list[ControlMessage]:
        if port is not None:
            return [ControlMessage(port_id, PORT_READY, 1)]  # "already added": re-ready
        if port_id >= self.max_nr_ports:
            return []  # "out-of-bound id": warned and ignored
        self.ports[port_id] = DriverPort(port_id)
        return [ControlMessage(port_id, PORT_READY, 1)]

    def _port_event(self, port: DriverPort, message: ControlMessage) -> list[ControlMessage]:
        if message.event == PORT_REMOVE:
            del self.ports[port.id]
        elif message.event == CONSOLE_PORT and message.value and not port.is_console:
            port.is_console = True
            port.guest_connected = True  # init_port_console
            return [ControlMessage(port.id, PORT_OPEN, 1)]
        elif message.event == PORT_OPEN:
            port.host_connected = bool(message.value)
        elif message.event == PORT_NAME and port.name is None:
            port.name = message.payload.split(b"\0", 1)[0].decode(errors="replace")
        return []


def exchange(
    device: DeviceControl,
    driver: DriverControl,
    first: ControlMessage,
    rx_buffers: int | None = None,
) -> list[Wire]:
    """Run the control conversation started by ``first`` (driver->device) to quiescence.

    The driver's send is synchronous (it spins until QEMU consumed the buffer, and QEMU
    handles control_out in the same call), so QEMU's replies are queued behind whatever was
    already waiting in the control rx queue; the driver works that queue in FIFO order.

    ``rx_buffers``: free buffers in the guest's control rx queue (c_ivq) when the
    conversation starts (None: unlimited).  Every device->driver message takes one; QEMU's
    send_control_msg drops the message when virtqueue_pop finds none (no retry, no queueing).
    Linux's control_work_handler gives a buffer back (add_inbuf) only after
    handle_control_message returned, i.e. after the synchronous sends it made were answered.
    """
    log: list[Wire] = []
    inbox: deque[ControlMessage] = deque()
    free = rx_buffers

    def to_device(message: ControlMessage) -> None:
        nonlocal free
        log.append(Wire(TO_DEVICE, message))
        for reply in device.receive(encode(message)):
            if free == 0:
                log.append(Wire(TO_DRIVER, reply, lost=True))
                continue
            if free is not None:
                free -= 1
            log.append(Wire(TO_DRIVER, reply))
            inbox.append(reply)

    to_device(first)
    while inbox:
        for reply in driver.receive(encode(inbox.popleft())):
            to_device(reply)
        if free is not None:
            free += 1  # add_inbuf after handle_control_message
    return log


def handshake(
    ports: list[DevicePort], max_nr_ports: int, behaviour: Behaviour | None = None
) -> tuple[list[Wire], DriverControl]:
    """DEVICE_READY -> PORT_ADD for every port -> PORT_READY -> CONSOLE_PORT/NAME/OPEN, with
    the guest's control rx queue full of fresh buffers (``Behaviour.control_rx_buffers``)."""
    behaviour = behaviour or Behaviour()
    device = DeviceControl(ports, behaviour)
    driver = DriverControl(max_nr_ports)
    first = ControlMessage(BAD_ID, DEVICE_READY, 1)
    log = exchange(device, driver, first, behaviour.control_rx_buffers)
    return log, driver


def lost(log: list[Wire]) -> list[ControlMessage]:
    """The messages QEMU dropped for want of a control rx buffer, in send order."""
    return [wire.message for wire in log if wire.lost]
