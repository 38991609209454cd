"""What a machine is made of before it boots: controllers, ports, memory, and their defaults.

One declaration type for every layer: the scenario schema builds these from YAML, the model
is built from them, the backend starts QEMU from them and the plugin's fixtures declare the
default machine with them.  The defaults live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Backend = Literal["socket", "none"]

DEFAULT_MEMORY = 512  # MiB
DEFAULT_CONTROLLER = "vser0"
DEFAULT_MAX_PORTS = 31  # QEMU's own default for virtio-serial-pci's max_ports
BACKENDS: tuple[Backend, ...] = ("socket", "none")


@dataclass(frozen=True)
class ControllerDecl:
    """A virtio-serial-pci controller (``-device virtio-serial-pci,id=...,max_ports=...``)."""

    id: str = DEFAULT_CONTROLLER
    max_ports: int = DEFAULT_MAX_PORTS


@dataclass(frozen=True)
class PortDecl:
    """A virtserialport (or virtconsole when ``console``) on ``controller``."""

    name: str
    controller: str = DEFAULT_CONTROLLER
    nr: int | None = None
    console: bool = False
    backend: Backend = "socket"


@dataclass(frozen=True)
class MachineDecl:
    """The machine at boot; an empty declaration is one default controller and no ports."""

    memory: int = DEFAULT_MEMORY
    controllers: tuple[ControllerDecl, ...] = (ControllerDecl(),)
    ports: tuple[PortDecl, ...] = ()
