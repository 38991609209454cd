"""Named switches for places where layers or versions disagree.

Defaults are Debian 12's QEMU 7.2 and Linux 6.x; the plugin moves the version-dependent
switches with the kernel release (plugin/kernels.py) and the QEMU version
(plugin/qemu_versions.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.model.host_socket import DEFAULT_SNDBUF


@dataclass(frozen=True)
class Behaviour:
    """Each field names one disagreement; the docstring of the field's use site cites why."""

    #: QEMU sends PORT_NAME as name + NUL (seed lines 361-366, unchanged today); the virtio
    #: spec says the name is not NUL-terminated.  Linux 6.x shows the same name either way.
    port_name_trailing_nul: bool = True
    #: 2010 seed line 571: load fails when the source max_nr_ports exceeds ours and the
    #: ports_map loop runs over the *source* word count.  Today the field is ignored and the
    #: loop runs over the destination's word count.
    load_checks_max_nr_ports: bool = False
    #: Newer kernels allocate console vtermnos with an IDA (freed on unplug, so reused); Debian
    #: 12's 6.1 was observed (scenario port_id_allocation, TCG guest) to use a counter that only
    #: grows: con1=1, con2=2, unplug con1, con3=3.  Default = the observed default kernel.
    console_vtermno_reuse: bool = False
    #: Linux port_fops_write caps one write() at 32 KiB: one out_vq buffer per call.
    guest_write_chunk: int = 32 * 1024
    #: QEMU creates data queues with 128 descriptors; Linux marks outvq_full at num_free == 0.
    guest_outvq_buffers: int = 128
    #: Linux fills each in_vq with PAGE_SIZE buffers (fill_queue): 128 x 4 KiB of guest rx room.
    guest_rx_capacity: int = 128 * 4096
    #: Linux counts bytes_received in get_inbuf(), which takes ONE filled buffer at a time (the
    #: next only once the reader used it up): buffers QEMU filled behind it are not counted yet.
    #: Observed on 6.1 under TCG: after 1 MiB arrived unread, bytes_received grew by 4096.
    #: The model fills buffers full; separate small host writes really land in separate,
    #: smaller buffers (the prediction is then an upper bound the real count reaches on read).
    guest_rx_buffer: int = 4096
    #: The host's unix socket send buffer (net.core.wmem_default): a stalled host's socket
    #: takes QEMU's writes while their truesize charge is below it (model/host_socket.py).
    #: 0: a socket that takes nothing (unit tests: every write is held).
    host_socket_sndbuf: int = DEFAULT_SNDBUF
    #: Buffers in the guest's control receive queue (c_ivq) when the driver (re)probes: QEMU
    #: sizes it in virtio_serial_device_realize (virtio_add_queue(vdev, 32, control_in)) and
    #: Linux's probe fills every slot (fill_queue).  QEMU's send_control_msg drops a message
    #: when virtqueue_pop finds no buffer, so the probe handshake loses messages once the
    #: queue runs dry: 24 host-connected ports lose PORT_OPEN 1 for ports 8-24 (observed on
    #: QEMU 7.2.22).  QEMU 10.0.13 forces every virtqueue to VIRTQUEUE_MAX_SIZE (1024) in
    #: virtio_add_queue, which hides the loss; see harness/plugin/qemu_versions.py.
    control_rx_buffers: int = 32


#: The switches that are virtqueue sizes.  QEMU saves each queue's size (vring.num) in the
#: migration stream and the destination's virtio_load takes it, and the guest's rings (and
#: the buffers it posted) live in guest RAM: a migrated device keeps the *source's* sizes
#: until the guest resets it (reboot, driver reload), when virtio_reset restores the
#: destination's own (vring.num_default).
QUEUE_SIZE_SWITCHES = ("control_rx_buffers", "guest_outvq_buffers", "guest_rx_capacity")


def migrated(source: Behaviour, destination: Behaviour) -> Behaviour:
    """A device just migrated from a QEMU with `source` to one with `destination`: the
    destination's switches (its code runs now), with the queue sizes the stream carried."""
    return replace(destination, **{name: getattr(source, name) for name in QUEUE_SIZE_SWITCHES})
