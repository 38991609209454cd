"""The virtio-serial machine: QEMU's device state plus what the Linux driver makes observable.

Every operation is atomic: control messages are delivered and processed before it returns,
so "QEMU guest_connected" and "guest driver guest_connected" never disagree between
operations.  Operations that would block return an Outcome with ``pending`` set; the
operation that unblocks them lists them in its ``completed``.

Modelling choices (documented because a runner must agree with them):
- ``guest_write`` is an agent loop over write() calls of at most ``guest_write_chunk`` bytes
  (Linux port_fops_write caps a call at 32 KiB); it completes when every byte was accepted
  by the driver.  Non-blocking: returns the bytes accepted before the first EAGAIN, or raises
  EAGAIN when none were.
- ``guest_read`` is an agent loop that returns everything deliverable now (up to max_bytes).
  One that blocks wakes with a single read() call: the buffer the driver holds (at most
  max_bytes), as fill_readbuf copies from one buffer only.
- ``host_write`` never blocks: the host backend buffers for the socket.  ``host_read`` is
  non-blocking: EAGAIN when nothing is readable.
- Closing a guest fd while an operation is blocked on it completes that operation with EBADF.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.model import errors as E
from harness.model.behaviour import Behaviour, migrated
from harness.model.control import DevicePort, handshake
from harness.model.declarations import DEFAULT_MAX_PORTS, Backend
from harness.model.either import EITHER, MaybeBool
from harness.model.host_socket import StalledSocket
from harness.model.payload import Payload, Slice, SliceQueue, as_payload, slices_sha256
from harness.model.vterm import Vtermno, VtermRange

if TYPE_CHECKING:
    from harness.model.snapshot import Snapshot

G2H = "guest->host"
H2G = "host->guest"
MAX_SUPPORTED_PORTS = 1024 // 2 - 1  # VIRTIO_QUEUE_MAX / 2 - 1 = 511


@dataclass(frozen=True)
class ReadResult:
    """What a read delivered: slices of payloads, or end-of-file."""

    slices: tuple[Slice, ...] = ()
    eof: bool = False

    @property
    def length(self) -> int:
        return sum(piece.length for piece in self.slices)

    def sha256(self) -> str:
        return slices_sha256(self.slices)


EOF_RESULT = ReadResult(eof=True)


@dataclass(frozen=True)
class Pending:
    ticket: int
    op: str
    port: str


@dataclass(frozen=True)
class Completion:
    ticket: int
    op: str
    port: str
    result: object = None
    error: E.ModelError | None = None


@dataclass(frozen=True)
class Outcome:
    value: object = None
    pending: Pending | None = None
    completed: tuple[Completion, ...] = ()


@dataclass(frozen=True)
class Discard:
    port: str
    direction: str
    where: str
    nbytes: int
    reason: str


@dataclass
class Chunk:
    """One guest write() call: one out_vq buffer / one QEMU VirtQueueElement."""

    slices: list[Slice]

    @property
    def length(self) -> int:
        return sum(piece.length for piece in self.slices)


@dataclass
class GuestFile:
    nonblocking: bool
    unplugged: bool = False


@dataclass
class GuestPort:
    """Linux struct port as debugfs/sysfs show it, plus its queues."""

    name: str | None
    is_console: bool = False
    guest_connected: bool = False
    host_connected: bool = False
    vtermno: Vtermno = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_discarded: int = 0
    rx: SliceQueue = field(default_factory=SliceQueue)
    #: bytes QEMU put into this port's rx buffers: each fill is an in_intr, which raises
    #: SIGIO on an fd with O_ASYNC (bytes_received moves when the driver takes a buffer,
    #: which a read does too, so it does not tell an arrival)
    delivered: int = 0
    #: bytes left in the one rx buffer the driver holds (port->inbuf); see Behaviour.guest_rx_buffer
    held: int = 0
    outvq: deque[Chunk] = field(default_factory=deque)
    fd: GuestFile | None = None


@dataclass
class Port:
    name: str
    controller: str
    nr: int
    console: bool
    backend: Backend
    guest_connected: bool = False  # QEMU's view
    host_connected: bool = False  # QEMU's view
    throttled: bool = False
    held: Chunk | None = None  # port->elem
    held_offset: int = 0  # port->iov_offset
    host_attached: bool = False  # a host client is connected to the chardev socket
    stalled: bool = False
    h2g_socket: SliceQueue = field(default_factory=SliceQueue)
    to_host: SliceQueue = field(default_factory=SliceQueue)
    #: while stalled: what QEMU wrote into the socket (the tail of to_host, not yet readable)
    socket: StalledSocket = field(default_factory=StalledSocket)
    guest: GuestPort | None = None
    removed: bool = False

    @property
    def throttle_view(self) -> MaybeBool:
        """QEMU's throttle flag as predicted: EITHER while the stalled socket may have
        refused a write the model let through (see harness/model/host_socket.py)."""
        return True if self.throttled else (EITHER if self.socket.unsure else False)

    @property
    def host_readable(self) -> int:
        """Bytes of to_host the host can read now (not those still in a stalled socket)."""
        return len(self.to_host) - self.socket.nbytes


@dataclass
class Controller:
    id: str
    max_ports: int
    ports_map: list[int]
    ports: list[str] = field(default_factory=list)  # QTAILQ order
    #: Without MULTIPORT, Linux's probe makes port 0 a console itself (add_port(portdev, 0)
    #: -> init_port_console) whether or not QEMU has a port there: this is that guest port.
    guest0: GuestPort | None = None

    @property
    def multiport(self) -> bool:
        """MULTIPORT only when max_ports > 1 (seed get_features, lines 464-474)."""
        return self.max_ports > 1


@dataclass
class _Blocked:
    pending: Pending
    remaining: SliceQueue | None = None  # guest_write
    done: int = 0
    max_bytes: int | None = None  # guest_read


def find_free_port_id(ports_map: list[int]) -> int | None:
    """Seed lines 668-681: first clear bit of the map words, even if >= max_ports."""
    for index, word in enumerate(ports_map):
        free = ~word & 0xFFFFFFFF
        if free:
            return (free & -free).bit_length() - 1 + 32 * index
    return None


class VirtioSerialModel:
    """Controllers keyed by id, ports keyed by their (globally unique) name."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        #: the switches of the QEMU this device now runs on, where they differ from
        #: `behaviour` until the next guest reset (after a migration between QEMUs: see
        #: behaviour.QUEUE_SIZE_SWITCHES); None when `behaviour` is already all of them
        self.reset_behaviour: Behaviour | None = None
        self.controllers: dict[str, Controller] = {}
        self.ports: dict[str, Port] = {}
        self.removed: dict[str, Port] = {}
        #: names unplugged on this QEMU: a host op on one is ENODEV; after a migration the
        #: destination never had them (the guest keeps its fds: ``removed`` moves over)
        self.unplugged_here: set[str] = set()
        #: earlier ports of names plugged again since: the guest may still hold their fds
        self.stale: list[Port] = []
        self.discards: list[Discard] = []
        self.written = {G2H: 0, H2G: 0}
        self.read = {G2H: 0, H2G: 0}
        self._blocked: dict[int, _Blocked] = {}
        self._next_ticket = 1
        self._completed: list[Completion] = []
        self._vterm_counter = 0
        self._vterms_in_use: set[int] = set()
        #: a freed console's vtermno was a range: which number the IDA got back is unknown
        self._vterm_freed_unknown = False

    @property
    def qemu_behaviour(self) -> Behaviour:
        """The switches of the QEMU the device runs on (what its next reset applies)."""
        return self.reset_behaviour or self.behaviour

    def run_on(self, source: Behaviour, qemu: Behaviour) -> None:
        """This (destination) device takes a migrated device from a QEMU with `source`'s
        switches and runs on a QEMU with `qemu`'s: its code's switches apply now, the queue
        sizes the stream carried until the next guest reset."""
        self.behaviour = migrated(source, qemu)
        self.reset_behaviour = qemu if qemu != self.behaviour else None

    # ----------------------------------------------------------------- lookups
    def _port(self, name: str) -> Port:
        port = self.ports.get(name)
        if port is None:
            raise E.ModelError(self.missing_port_errno(name), name)
        return port

    def missing_port_errno(self, name: str) -> str:
        """ENODEV for a port unplugged from this QEMU, ENOENT for one it never had."""
        return E.ENODEV if name in self.unplugged_here else E.ENOENT

    def _guest_fd_port(self, name: str) -> Port:
        """The port behind the guest fd a step names: fds belong to port instances, not names.

        ``name`` means the fd the guest holds for the port now plugged under that name; when
        it holds none, the fd it still holds for an earlier (unplugged) port of that name,
        the newest first.  Linux keeps an unplugged port alive while an fd refers to it.
        """
        live = self.ports.get(name)
        older = [self.removed[name]] if name in self.removed else []
        older += [p for p in reversed(self.stale) if p.name == name]
        candidates = ([live] if live is not None else []) + older
        if not candidates:
            raise E.ModelError(E.ENOENT, name)
        for port in candidates:
            if port.guest is not None and port.guest.fd is not None:
                return port
        if live is None and name not in self.unplugged_here:  # gone with a migration
            raise E.ModelError(E.ENOENT, f"{name}: no fd, and this QEMU never had the port")
        raise E.ModelError(E.EBADF, f"no open guest fd for {name}")

    def blocked(self) -> list[Pending]:
        return [b.pending for b in self._blocked.values()]

    def _outcome(self, value: object = None, pending: Pending | None = None) -> Outcome:
        self._settle()
        done, self._completed = tuple(self._completed), []
        return Outcome(value, pending, done)

    def _discard(self, port: Port, direction: str, where: str, nbytes: int, why: str) -> None:
        if nbytes:
            self.discards.append(Discard(port.name, direction, where, nbytes, why))

    # ------------------------------------------------------------- controllers
    def hotplug_controller(self, id: str, max_ports: int = DEFAULT_MAX_PORTS) -> Outcome:
        """virtio_serial_device_realize (seed lines 808-886)."""
        if id in self.controllers:
            raise E.ModelError(E.duplicate_device_id(id))
        if not 0 <= max_ports <= E.UINT32_MAX:  # a uint32 property: QEMU's parser refuses it
            raise E.ModelError(E.expects_uint32("max_ports"))
        if max_ports == 0:
            raise E.ModelError(E.MAX_PORTS_NOT_SPECIFIED)
        if max_ports > MAX_SUPPORTED_PORTS:
            raise E.ModelError(E.max_supported(MAX_SUPPORTED_PORTS))
        words = [0] * ((max_ports + 31) // 32)
        words[0] |= 1  # id 0 reserved for a console (seed line 870)
        ctrl = Controller(id, max_ports, words)
        self.controllers[id] = ctrl
        if not ctrl.multiport:
            ctrl.guest0 = self._probe_console()
        return self._outcome()

    def unplug_controller(self, id: str) -> Outcome:
        """device_del of the controller unplugs every port on its bus first."""
        ctrl = self.controllers.get(id)
        if ctrl is None:
            raise E.ModelError(E.device_not_found(id))
        for name in list(ctrl.ports):
            self._unplug(self.ports[name])
        if ctrl.guest0 is not None:  # the driver's remove frees port 0's vtermno too
            self._free_vterm(ctrl.guest0.vtermno)
        del self.controllers[id]
        return self._outcome()

    # ------------------------------------------------------------------- ports
    def hotplug(
        self,
        name: str,
        *,
        controller: str,
        nr: int | None = None,
        console: bool = False,
        backend: Backend = "socket",
    ) -> int:
        """virtser_port_device_realize + virtconsole_realize; returns the port id."""
        ctrl = self.controllers.get(controller)
        if ctrl is None:
            raise E.ModelError(E.bus_not_found(controller))
        nr = self._choose_id(ctrl, name, nr, console)
        port = Port(name, controller, nr, console, backend)
        if console and backend == "socket":
            port.host_connected = True  # virtconsole_realize opens it for good
        ctrl.ports_map[nr // 32] |= 1 << (nr % 32)
        ctrl.ports.append(name)
        self.ports[name] = port
        earlier = self.removed.pop(name, None)
        self.unplugged_here.discard(name)
        if earlier is not None:  # the old instance's unread host data can no longer be read
            self._discard(earlier, G2H, "host socket", len(earlier.to_host), "port plugged again")
            earlier.to_host = SliceQueue()  # discarded, not in flight (found by exploration)
            self.stale.append(earlier)
        self._guest_add(port, ctrl.multiport)
        self._settle()
        return nr

    def _port_at(self, ctrl: Controller, nr: int) -> Port | None:
        return next((self.ports[n] for n in ctrl.ports if self.ports[n].nr == nr), None)

    def _choose_id(self, ctrl: Controller, name: str, nr: int | None, console: bool) -> int:
        """The checks in QEMU's order: id taken, name taken, allocation, range, nr 0."""
        if nr is not None and not 0 <= nr <= E.UINT32_MAX:  # a uint32 property
            raise E.ModelError(E.expects_uint32("nr"))
        if nr == E.UINT32_MAX:  # VIRTIO_CONSOLE_BAD_ID, the property's "not given"
            nr = None
        plugging_port0 = console and self._port_at(ctrl, 0) is None
        if nr is not None and self._port_at(ctrl, nr) is not None:
            raise E.ModelError(E.port_exists_at_id(nr))
        if name in self.ports:
            raise E.ModelError(E.port_exists_by_name(name))
        if nr is None:
            nr = 0 if plugging_port0 else find_free_port_id(ctrl.ports_map)
            if nr is None:
                raise E.ModelError(E.MAX_PORTS_REACHED)
        if nr >= ctrl.max_ports:
            raise E.ModelError(E.out_of_range(ctrl.max_ports))
        if nr == 0 and not console:
            raise E.ModelError(E.NR0_RESERVED)
        return nr

    def unplug(self, name: str) -> Outcome:
        """Hot unplug is immediate: bit cleared (not for 0), data discarded, PORT_REMOVE."""
        port = self.ports.get(name)
        if port is None:
            raise E.ModelError(E.device_not_found(name))
        self._unplug(port)
        return self._outcome()

    def _unplug(self, port: Port) -> None:
        ctrl = self.controllers[port.controller]
        if port.nr:
            ctrl.ports_map[port.nr // 32] &= ~(1 << (port.nr % 32))
        ctrl.ports.remove(port.name)
        self._drop_g2h(port, "QEMU remove_port discards queued guest data")
        self._discard(port, H2G, "host socket", len(port.h2g_socket), "port unplugged")
        port.h2g_socket = SliceQueue()
        self._guest_unplug(port)
        port.removed = True
        del self.ports[port.name]
        self.removed[port.name] = port
        self.unplugged_here.add(port.name)

    def _drop_g2h(self, port: Port, why: str, keep_throttle: bool = False) -> None:
        """discard_throttle_data + discard_vq_data: the held element and the out_vq.

        QEMU's guest_reset only detaches the held element: ``throttled`` stays set until the
        chardev is writable again (chr_write_unblocked), so a reset passes ``keep_throttle``.
        """
        held = port.held.length - port.held_offset if port.held else 0
        outvq = port.guest.outvq if port.guest is not None else deque()
        self._discard(port, G2H, "QEMU", held + sum(c.length for c in outvq), why)
        port.held, port.held_offset = None, 0
        port.throttled = port.throttled and keep_throttle
        outvq.clear()

    # -------------------------------------------------------------- guest side
    def _alloc_vterm(self) -> Vtermno:
        if self.behaviour.console_vtermno_reuse:
            vterm = 1
            while vterm in self._vterms_in_use:
                vterm += 1
            self._vterms_in_use.add(vterm)
            # the real in-use set is a subset of ours, so its lowest free number is no higher
            return VtermRange(1, vterm) if self._vterm_freed_unknown else vterm
        self._vterm_counter += 1
        return self._vterm_counter

    def _free_vterm(self, vterm: Vtermno) -> None:
        """unplug_port's ida_free (reuse only): a range frees a number the model can't name."""
        if isinstance(vterm, VtermRange):
            self._vterm_freed_unknown = True
        else:
            self._vterms_in_use.discard(vterm)

    def _probe_console(self) -> GuestPort:
        """virtcons_probe without MULTIPORT: add_port(portdev, 0) -> init_port_console.

        The port exists in the guest whatever QEMU has at id 0: a console with a vtermno,
        guest_connected, no name and no host state (no control queue to learn them)."""
        vterm = self._alloc_vterm()
        return GuestPort(name=None, is_console=True, guest_connected=True, vtermno=vterm)

    def _guest_add(self, port: Port, multiport: bool) -> None:
        """PORT_ADD -> add_port -> PORT_READY -> CONSOLE_PORT / PORT_NAME / PORT_OPEN.

        Without MULTIPORT there are no control messages: the guest never hears of the port;
        its port 0 is the one the probe made (Controller.guest0), and QEMU sets
        guest_connected only at DRIVER_OK (set_status), i.e. at boot or reset, not here.
        """
        if not multiport:
            port.guest = self.controllers[port.controller].guest0
            return
        guest = GuestPort(name=port.name, host_connected=port.host_connected)
        if port.console:
            guest.is_console = True
            guest.guest_connected = True
            guest.vtermno = self._alloc_vterm()
            port.guest_connected = True  # init_port_console sends PORT_OPEN 1
        port.guest = guest

    def _guest_unplug(self, port: Port) -> None:
        """Linux unplug_port: wake the fd holder, drop unread data, free the vtermno."""
        guest = port.guest
        if guest is None:
            return  # the guest never learnt of the port (PORT_ADD lost): PORT_REMOVE ignored
        if guest is self.controllers[port.controller].guest0:
            port.guest = None  # no PORT_REMOVE without a control queue: the guest keeps port 0
            return
        self._discard(port, H2G, "guest", len(guest.rx), "port unplugged")
        if guest.is_console:
            self._free_vterm(guest.vtermno)
        if guest.fd is not None:
            guest.fd.unplugged = True
            guest.guest_connected = guest.host_connected = False
            self._fail_blocked(port.name, E.ModelError(E.ENODEV, "port unplugged"))
        else:
            port.guest = None
        guest.rx = SliceQueue()

    def guest_open(self, name: str, nonblocking: bool = False) -> Outcome:
        """port_fops_open: ENXIO for consoles, EBUSY when open; ENOENT once unplugged.

        unplug_port destroys the device, so devtmpfs removes /dev/vportNpM and open() fails
        in the VFS before the driver is reached (observed on 6.1: ENOENT, errno 2)."""
        if name in self.removed and name not in self.ports:
            raise E.ModelError(E.ENOENT, "port was unplugged: its device node is gone")
        port = self._port(name)
        guest = port.guest
        if guest is None:
            raise E.ModelError(E.ENOENT, "the guest never got PORT_ADD (no control rx buffer)")
        if guest.is_console:
            raise E.ModelError(E.ENXIO, "console ports are opened through hvc")
        if guest.guest_connected:
            raise E.ModelError(E.EBUSY)
        guest.guest_connected = True
        guest.fd = GuestFile(nonblocking)
        port.guest_connected = True  # PORT_OPEN 1
        return self._outcome()

    def guest_close(self, name: str) -> Outcome:
        """port_fops_release: PORT_OPEN 0, unread input discarded (bytes_discarded)."""
        port = self._guest_fd_port(name)
        guest = port.guest
        assert guest is not None and guest.fd is not None
        self._fail_blocked(name, E.ModelError(E.EBADF, "fd closed"))
        if guest.fd.unplugged:
            port.guest = None  # portdev is gone: no control message, nothing to discard
            return self._outcome()
        guest.fd = None
        guest.guest_connected = False
        port.guest_connected = False
        guest.bytes_received += len(guest.rx) - guest.held  # discard_port_data takes them all
        guest.held = 0
        guest.bytes_discarded += len(guest.rx)
        self._discard(port, H2G, "guest", len(guest.rx), "guest closed with unread input")
        guest.rx = SliceQueue()
        return self._outcome()

    def guest_seek(self, name: str) -> Outcome:
        """lseek on a port fd: nonseekable_open makes it ESPIPE."""
        self._guest_fd_port(name)
        raise E.ModelError(E.ESPIPE)

    def guest_write(self, name: str, payload: Payload | bytes) -> Outcome:
        port = self._guest_fd_port(name)
        data = as_payload(payload)
        if data.length == 0:  # port_fops_write returns 0 for !count before anything else
            return self._outcome(0)
        if port.guest.fd.unplugged:  # type: ignore[union-attr]
            raise E.ModelError(E.ENODEV)
        job = _Blocked(Pending(0, "guest_write", name), SliceQueue([Slice(data, 0, data.length)]))
        self._progress_write(port, job)
        if not len(job.remaining):  # type: ignore[arg-type]
            return self._outcome(job.done)
        if port.guest.fd.nonblocking:  # type: ignore[union-attr]
            if job.done == 0:
                raise E.ModelError(E.EAGAIN)
            return self._outcome(job.done)
        return self._block(job)

    def guest_read(self, name: str, max_bytes: int | None = None) -> Outcome:
        port = self._guest_fd_port(name)
        guest = port.guest
        assert guest is not None and guest.fd is not None
        if guest.fd.unplugged:
            raise E.ModelError(E.ENODEV)
        result = self._try_read(port, max_bytes)
        if result is not None:
            return self._outcome(result)
        if guest.fd.nonblocking:
            raise E.ModelError(E.EAGAIN)
        return self._block(_Blocked(Pending(0, "guest_read", name), max_bytes=max_bytes))

    def poll(self, name: str) -> frozenset[str]:
        """port_fops_poll."""
        port = self._guest_fd_port(name)
        guest = port.guest
        assert guest is not None and guest.fd is not None
        if guest.fd.unplugged:
            return frozenset({"HUP"})
        mask = set()
        if len(guest.rx) or not guest.host_connected:
            mask.add("IN")
        if guest.host_connected and not self._outvq_full(port):
            mask.add("OUT")
        if not guest.host_connected:
            mask.add("HUP")
        return frozenset(mask)

    def guest_reset(self) -> Outcome:
        """Driver reload / reboot: opens dropped, buffers lost, QEMU guest_reset, handshake.

        The driver probes the controllers in PCI slot order.  A controller without MULTIPORT
        makes its console inside probe (add_port(portdev, 0)); a MULTIPORT one learns its
        consoles from control messages in its own workqueue item (portdev->control_work).
        When more than one of these makes consoles in one reset (the probe thread, or two
        MULTIPORT controllers' work items) their vtermnos race (see harness.model.vterm):
        each gets the range of the reset's numbers, not one number.  Observed for two work
        items by the 20-minute exploration on 6.1: after a reboot a hot-plugged
        controller's console and the boot controller's swapped numbers, and did not on the
        replay.  One work item makes its consoles in QEMU's port list order.  The device
        reset gives the queues their sizes on the QEMU the device runs on now."""
        if self.reset_behaviour is not None:
            self.behaviour, self.reset_behaviour = self.reset_behaviour, None
        for name in list(self._blocked_ports()):
            self._fail_blocked(name, E.ModelError(E.KILLED, "guest reset"))
        for port in [*self.removed.values(), *self.stale]:
            port.guest = None  # the reset process held the last fd of unplugged ports
        self._vterms_in_use.clear()
        self._vterm_freed_unknown = False
        self._vterm_counter = 0
        controllers = list(self.controllers.values())  # PCI slot order
        probed: list[GuestPort] = []  # consoles the probe thread made
        for ctrl in controllers:
            if not ctrl.multiport:
                ctrl.guest0 = self._probe_console()
                probed.append(ctrl.guest0)
            for name in ctrl.ports:
                self._reset_port(self.ports[name], ctrl.multiport)
        work_items = [self._probe(ctrl) for ctrl in controllers if ctrl.multiport]
        queued = [guest for item in work_items for guest in item]
        makers = bool(probed) + sum(1 for item in work_items if item)
        if makers > 1:
            for guest in probed + queued:
                guest.vtermno = VtermRange(1, len(probed) + len(queued))
        return self._outcome()

    reboot = guest_reset

    def boot(self) -> Outcome:
        """Power-on after the boot devices were added: the driver probes the controllers in
        PCI slot order (see guest_reset for the vtermno order).  For a machine nobody
        touched yet this is exactly a reset."""
        return self.guest_reset()

    def _reset_port(self, port: Port, multiport: bool) -> None:
        self._drop_g2h(port, "guest reset", keep_throttle=True)
        port.guest_connected = False
        if port.guest is not None:
            self._discard(port, H2G, "guest", len(port.guest.rx), "guest reset")
        port.guest = None
        if not multiport:
            self._guest_add(port, multiport)
            port.guest_connected = True  # set_status: DRIVER_OK marks port 0 open

    def _probe(self, ctrl: Controller) -> list[GuestPort]:
        """The driver's probe handshake with every port of ``ctrl`` at once (control.handshake,
        with Behaviour.control_rx_buffers fresh control rx buffers).  What QEMU dropped for
        want of a buffer the guest never learns: no PORT_ADD, no port at all; no PORT_NAME,
        no name; no CONSOLE_PORT, no console; no PORT_OPEN 1, "host closed" in the guest
        while QEMU says host on (read gives EOF, write blocks) until the host reconnects.
        Returns the consoles it made, in the order its workqueue item made them."""
        ports = [self.ports[name] for name in ctrl.ports]
        device = [DevicePort(p.nr, p.name, p.console, p.host_connected) for p in ports]
        _, driver = handshake(device, ctrl.max_ports, self.behaviour)
        consoles = []
        for port in ports:
            seen = driver.ports.get(port.nr)
            if seen is None:
                continue  # PORT_ADD lost
            port.guest = GuestPort(name=seen.name, host_connected=seen.host_connected)
            if seen.is_console:
                port.guest.is_console = port.guest.guest_connected = True
                port.guest.vtermno = self._alloc_vterm()
                port.guest_connected = True  # init_port_console sends PORT_OPEN 1
                consoles.append(port.guest)
        return consoles

    def _blocked_ports(self) -> set[str]:
        return {b.pending.port for b in self._blocked.values()}

    # --------------------------------------------------------------- host side
    def host_open(self, name: str) -> Outcome:
        """The host connects to the chardev socket (CHR_EVENT_OPENED -> virtio_serial_open)."""
        port = self._port(name)
        if port.backend == "none":
            raise E.ModelError(E.ECONNREFUSED, "port has no chardev")
        if port.host_attached:
            raise E.ModelError(E.EISCONN)
        port.host_attached = True
        if not port.console:
            port.host_connected = True
            self._send_port_open(port)
        return self._outcome()

    def host_close(self, name: str) -> Outcome:
        """virtio_serial_close: throttle reset, queued guest data dropped, PORT_OPEN 0."""
        port = self._port(name)
        if not port.host_attached:
            raise E.ModelError(E.ENOTCONN)
        port.host_attached = False
        port.stalled, port.socket = False, StalledSocket()
        self._discard(port, G2H, "host socket", len(port.to_host), "host closed unread")
        self._discard(port, H2G, "host socket", len(port.h2g_socket), "host closed unsent")
        port.to_host, port.h2g_socket = SliceQueue(), SliceQueue()
        if not port.console:
            port.host_connected = False
            self._drop_g2h(port, "host closed")
            self._send_port_open(port)
        return self._outcome()

    def _send_port_open(self, port: Port) -> None:
        if port.guest is not None:  # else Linux drops it: "Invalid index in control packet"
            port.guest.host_connected = port.host_connected

    def host_write(self, name: str, payload: Payload | bytes) -> Outcome:
        port = self._port(name)
        data = as_payload(payload)
        if not port.host_attached:
            raise E.ModelError(E.ENOTCONN)
        self.written[H2G] += data.length
        port.h2g_socket.push(Slice(data, 0, data.length))
        return self._outcome(data.length)

    def host_read(self, name: str, max_bytes: int | None = None) -> Outcome:
        port = self.ports.get(name) or self.removed.get(name)
        if port is None:
            raise E.ModelError(E.ENOENT, name)
        readable = port.host_readable
        if not readable:
            if port.removed:  # ENOENT once migrated: the destination never had the port
                raise E.ModelError(self.missing_port_errno(name))
            if not port.host_attached:
                raise E.ModelError(E.ENOTCONN)
            raise E.ModelError(E.EAGAIN)
        slices = port.to_host.take(readable if max_bytes is None else min(max_bytes, readable))
        # an unplug removes the port's chardev too: its socket ends after the last byte
        result = ReadResult(tuple(slices), eof=port.removed and not len(port.to_host))
        self.read[G2H] += result.length
        return self._outcome(result)

    def set_host_backpressure(self, name: str, stalled: bool) -> Outcome:
        """The host stops/resumes reading: short chardev writes throttle serial ports."""
        port = self._port(name)
        if not port.host_attached:
            raise E.ModelError(E.ENOTCONN)
        port.stalled = stalled
        if not stalled:  # the host reads the socket empty
            port.socket = StalledSocket()
            port.throttled = False  # chr_write_unblocked -> virtio_serial_throttle_port
        return self._outcome()

    # ------------------------------------------------------------- data paths
    def _outvq_full(self, port: Port) -> bool:
        guest = port.guest
        assert guest is not None
        used = len(guest.outvq) + (1 if port.held else 0)
        return used >= self.behaviour.guest_outvq_buffers

    def _progress_write(self, port: Port, job: _Blocked) -> bool:
        """Push write() calls while the port is writable; True when anything moved."""
        guest = port.guest
        assert guest is not None and job.remaining is not None
        moved = False
        while len(job.remaining) and guest.host_connected and not self._outvq_full(port):
            chunk = Chunk(job.remaining.take(self.behaviour.guest_write_chunk))
            guest.outvq.append(chunk)
            guest.bytes_sent += chunk.length
            job.done += chunk.length
            self.written[G2H] += chunk.length
            self._flush(port)
            moved = True
        return moved

    def _flush(self, port: Port) -> bool:
        """do_flush_queued_data: hand queued elements to the chardev until throttled."""
        guest = port.guest
        if guest is None:
            return False
        moved = False
        while not port.throttled and (port.held or guest.outvq):
            if port.held is None:
                port.held, port.held_offset = guest.outvq.popleft(), 0
                moved = True
            want = port.held.length - port.held_offset
            if port.stalled and not port.socket.offer(want, self.behaviour.host_socket_sndbuf):
                port.throttled = True  # flush_buf: the chardev write came back short
                return moved
            self._emit(port, port.held, port.held_offset, want)
            port.held, port.held_offset = None, 0
            moved = True
        return moved

    def _emit(self, port: Port, chunk: Chunk, offset: int, count: int) -> None:
        queue = SliceQueue(chunk.slices)
        queue.take(offset)
        for piece in queue.take(count):
            port.to_host.push(piece)

    def _pump_h2g(self, port: Port) -> bool:
        """chr_can_read/chr_read: QEMU reads the socket only while the guest has it open.

        A console is open from its probe on (init_port_console), so its input fills the
        guest's queue too, and in_intr's get_inbuf takes (and counts) the first buffer; with
        no tty on the hvc nothing reads it, so the rest waits (observed on 6.1 and 6.12:
        host writes of 1, 40000 and 300000 bytes, bytes_received 1)."""
        guest = port.guest
        if not len(port.h2g_socket) or guest is None or not port.guest_connected:
            return False
        room = self.behaviour.guest_rx_capacity - len(guest.rx)
        pieces = port.h2g_socket.take(max(0, room))
        for piece in pieces:
            guest.rx.push(piece)
            guest.delivered += piece.length
        self._take_inbuf(guest)
        return bool(pieces)

    def _take_inbuf(self, guest: GuestPort) -> None:
        """get_inbuf(): the driver takes one filled buffer, and only then counts its bytes."""
        if guest.held == 0 and len(guest.rx):
            guest.held = min(self.behaviour.guest_rx_buffer, len(guest.rx))
            guest.bytes_received += guest.held

    def _consume(self, guest: GuestPort, count: int) -> None:
        """`count` bytes were read (and taken from guest.rx): through the held buffer, then
        through the buffers behind it, each taken by get_inbuf on the way and counted whole;
        a read that ends inside a buffer keeps it held (found by exploration on 6.1 and
        6.12: 300000 bytes queued, a read of 5000 -> bytes_received 8192, two buffers).  A
        used-up buffer is followed by the next one at once (the snapshot's poll takes it)."""
        beyond = count - guest.held
        guest.held = max(0, guest.held - count)
        while beyond > 0:
            buffer = min(self.behaviour.guest_rx_buffer, beyond + len(guest.rx))
            guest.bytes_received += buffer
            guest.held = buffer - min(buffer, beyond)
            beyond -= buffer
        self._take_inbuf(guest)

    def _try_read(
        self, port: Port, max_bytes: int | None, one_call: bool = False
    ) -> ReadResult | None:
        """What a read delivers now: the agent's loop over read() calls, or with
        ``one_call`` a single read() (a blocked read wakes and reads once: fill_readbuf
        copies from the one buffer the driver holds)."""
        guest = port.guest
        assert guest is not None
        if not len(guest.rx):
            self._pump_h2g(port)
        if len(guest.rx):
            if one_call:
                self._take_inbuf(guest)
                max_bytes = guest.held if max_bytes is None else min(max_bytes, guest.held)
            out: list[Slice] = []
            while len(guest.rx) and (max_bytes is None or sum(p.length for p in out) < max_bytes):
                left = None if max_bytes is None else max_bytes - sum(p.length for p in out)
                taken = guest.rx.take(left)
                out.extend(taken)
                self._consume(guest, sum(p.length for p in taken))
                self._pump_h2g(port)
            result = ReadResult(tuple(out))
            self.read[H2G] += result.length
            return result
        if not guest.host_connected:
            return EOF_RESULT
        return None

    # --------------------------------------------------------------- blocking
    def _block(self, job: _Blocked) -> Outcome:
        ticket = self._next_ticket
        self._next_ticket += 1
        job.pending = Pending(ticket, job.pending.op, job.pending.port)
        self._blocked[ticket] = job
        return self._outcome(None, job.pending)

    def _finish(
        self, ticket: int, result: object = None, error: E.ModelError | None = None
    ) -> None:
        job = self._blocked.pop(ticket)
        p = job.pending
        self._completed.append(Completion(p.ticket, p.op, p.port, result, error))

    def _fail_blocked(self, name: str, error: E.ModelError) -> None:
        for ticket, job in list(self._blocked.items()):
            if job.pending.port == name:
                self._finish(ticket, None, error)

    def _settle(self) -> None:
        """Run every data path and blocked operation until nothing moves."""
        progress = True
        while progress:
            progress = False
            for port in self.ports.values():
                progress |= self._pump_h2g(port)
                progress |= self._flush(port)
            progress |= self._settle_blocked()

    def _settle_blocked(self) -> bool:
        progress = False
        for ticket, job in list(self._blocked.items()):
            port = self.ports[job.pending.port]
            if job.remaining is not None:
                progress |= self._progress_write(port, job)
                if not len(job.remaining):
                    self._finish(ticket, job.done)
                continue
            # found by exploration (6.1): 300000 bytes woke a blocked read, which returned
            # one buffer; the model gave it everything
            result = self._try_read(port, job.max_bytes, one_call=True)
            if result is not None:
                self._finish(ticket, result)
                progress = True
        return progress

    def guest_fds_open(self) -> list[str]:
        """Names of the ports, plugged or unplugged, that the guest holds an fd of: each fd
        holds a reference on the driver module, an unplugged port's too (Linux keeps the
        port alive until its last fd is closed)."""
        return sorted(
            {p.name for p in self._instances() if p.guest is not None and p.guest.fd is not None}
        )

    def _instances(self) -> list[Port]:
        """Every port instance that still holds data or a guest fd: plugged, unplugged,
        and earlier ones of names plugged again."""
        return [*self.ports.values(), *self.removed.values(), *self.stale]

    # ----------------------------------------------------------- accounting
    def delivered(self) -> dict[str, int]:
        """Bytes QEMU has put into each plugged port's guest rx buffers so far (see
        GuestPort.delivered): a step that moved one raised an in_intr there."""
        return {n: p.guest.delivered for n, p in self.ports.items() if p.guest is not None}

    def in_flight(self, direction: str) -> int:
        """Bytes written but neither read nor discarded yet."""
        total = 0
        for port in self._instances():
            if direction == G2H:
                total += len(port.to_host)
                total += port.held.length - port.held_offset if port.held else 0
                if port.guest is not None:
                    total += sum(c.length for c in port.guest.outvq)
            else:
                total += len(port.h2g_socket)
                total += len(port.guest.rx) if port.guest is not None else 0
        return total

    def discarded(self, direction: str) -> int:
        return sum(d.nbytes for d in self.discards if d.direction == direction)

    def snapshot(self) -> Snapshot:
        from harness.model.snapshot import take_snapshot

        return take_snapshot(self)
