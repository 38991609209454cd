"""Every QEMU this run names (--hil-qemu, --hil-qemu-destination; the host's by default) runs
as the harness runs it, and names the versioned machine type the guests get."""

from __future__ import annotations

import re

import pytest

from harness.machine.qemu_spec import default_machine_type, machine_types, qemu_version
from harness.plugin.options import HilSettings

pytestmark = pytest.mark.qemu


def test_each_qemu_of_the_run_runs_and_its_pc_alias_is_its_own_versioned_type(
    hil_settings: HilSettings,
) -> None:
    specs = list(hil_settings.qemus or (hil_settings.qemu,))
    specs += [hil_settings.qemu_destination] if hil_settings.qemu_destination else []
    for spec in specs:
        version = qemu_version(spec)
        found = re.match(r"(\d+)\.(\d+)", version)
        assert found is not None, f"{spec}: --version gave {version!r}"
        machine = default_machine_type(spec)
        assert machine == f"pc-i440fx-{found[1]}.{found[2]}", f"{spec} {version}: {machine}"
        assert machine in machine_types(spec)
