"""The saved-state cache: what the key is made of, atomic publish, the build lock, LRU eviction.

Pure file-system tests with fake QEMU binaries (shell scripts that print a version); the real
QEMU checks are in tests/integration/test_fast_start.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.images.qemu_pkg import QemuCommand
from harness.machine.errors import MachineError
from harness.machine.qemu import ControllerSpec, Machine, MachineSpec, PortSpec
from harness.machine.snapshot_cache import StateCache, StateKey, state_key


def _fake_qemu(path: Path, version: str) -> str:
    """Answers --version and -machine help (the machine type is read from it) like QEMU."""
    path.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && echo "QEMU emulator version {version}" && exit 0\n'
        "echo 'Supported machines are:'\n"
        "echo 'pc                   Standard PC (alias of pc-i440fx-7.2)'\n"
        "echo 'pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)'\n"
    )
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel one")
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd one")
    qemu = Path(_fake_qemu(tmp_path / "qemu-a", "7.2.22"))
    return {"kernel": kernel, "initrd": initrd, "qemu": qemu}


def _key(files: dict[str, Path], tmp_path: Path, name: str = "guest", **overrides: object) -> str:
    fields: dict[str, object] = {
        "kernel": files["kernel"],
        "initrd": files["initrd"],
        "cmdline": "console=ttyS0",
        "qemu": str(files["qemu"]),
        "controllers": [ControllerSpec("vser0")],
    }
    fields.update(overrides)
    machine = Machine(MachineSpec(**fields), tmp_path / "work" / name, name)  # type: ignore[arg-type]
    return state_key(machine.argv(7, 8), {"image": "default-x"}).digest


def _port(name: str, path: str, **kw: object) -> PortSpec:
    return PortSpec(name, "vser0", chardev_path=Path(path), ident="port1", **kw)  # type: ignore[arg-type]


def test_per_process_parts_do_not_change_the_key(files, tmp_path):
    """Socket paths, fds and the machine name differ between two guests of one kind."""
    one = _key(files, tmp_path, "scenario", ports=[_port("a", "/tmp/x/1.sock", nr=3)])
    two = _key(files, tmp_path, "guest", ports=[_port("a", "/tmp/y/1.sock", nr=3)])
    assert one == two


@pytest.mark.parametrize(
    "change",
    [
        {"memory_mib": 256},
        {"accel": "kvm"},
        {"cmdline": "console=ttyS0 quiet"},
        {"cpus": 2},
        {"controllers": [ControllerSpec("vser0", max_ports=2)]},
        {"controllers": [ControllerSpec("vser0"), ControllerSpec("vser1")]},
        {"ports": [_port("a", "/tmp/x/1.sock")]},
        {"ports": [_port("a", "/tmp/x/1.sock", nr=4)]},
        {"ports": [_port("a", "/tmp/x/1.sock", nr=3, console=True)]},
        {"ports": [_port("b", "/tmp/x/1.sock", nr=3)]},
        {"ports": [PortSpec("a", "vser0", 3, False, None, "port1")]},  # backend none
        {"extra_args": ["-rtc", "base=utc"]},
    ],
    ids=lambda change: next(iter(change)),
)
def test_every_command_line_input_changes_the_key(files, tmp_path, change):
    base = _key(files, tmp_path, ports=[_port("a", "/tmp/x/1.sock", nr=3)])
    fields = {"ports": [_port("a", "/tmp/x/1.sock", nr=3)], **change}
    assert _key(files, tmp_path, **fields) != base


def test_kernel_and_initrd_content_change_the_key(files, tmp_path):
    base = _key(files, tmp_path)
    files["kernel"].write_bytes(b"kernel two")
    os.utime(files["kernel"], ns=(1, 1))  # another size/mtime: the memo does not hide it
    assert _key(files, tmp_path) != base
    after_kernel = _key(files, tmp_path)
    files["initrd"].write_bytes(b"initrd two!")
    assert _key(files, tmp_path) != after_kernel


def test_qemu_binary_path_and_version_change_the_key(files, tmp_path):
    base = _key(files, tmp_path)
    other_path = _fake_qemu(tmp_path / "qemu-b", "7.2.22")
    assert _key(files, tmp_path, qemu=other_path) != base
    other_version = _fake_qemu(tmp_path / "qemu-c", "10.0.0")
    assert _key(files, tmp_path, qemu=other_version) != _key(files, tmp_path, qemu=other_path)


def test_extra_inputs_change_the_key(files):
    argv = [str(files["qemu"]), "-kernel", str(files["kernel"])]
    assert state_key(argv, {"image": "a"}).digest != state_key(argv, {"image": "b"}).digest


def _state_key(name: str) -> StateKey:
    return StateKey(name.ljust(32, "0"), {"name": name})


def _write(size: int = 4096):
    def write(tmps: dict[str, Path]) -> None:
        for part, tmp in tmps.items():
            tmp.write_bytes(part.encode()[:1] * size)

    return write


def test_publish_makes_a_complete_entry_and_logs_the_build(tmp_path):
    cache = StateCache(tmp_path)
    key = _state_key("a")
    assert cache.lookup(key) is None
    cache.publish(key, _write(), {"kernel_release": "6.1"})
    found = cache.lookup(key)
    assert found is not None and found.path.read_bytes() == b"s" * 4096
    assert found.paths["ram"].read_bytes() == b"r" * 4096
    assert found.meta["kernel_release"] == "6.1" and found.meta["bytes"] >= 2 * 4096
    assert (tmp_path / "builds.log").read_text().split()[0] == key.digest


def test_an_entry_missing_a_part_is_not_found(tmp_path):
    cache = StateCache(tmp_path)
    key = _state_key("i")
    cache.publish(key, _write(), {})
    cache.state_path(key, "ram").unlink()
    assert cache.lookup(key) is None


@pytest.mark.parametrize("error", [KeyboardInterrupt, MachineError])
def test_an_interrupted_save_leaves_nothing_that_loads(tmp_path, error):
    cache = StateCache(tmp_path)
    key = _state_key("b")

    def half_written(tmps: dict[str, Path]) -> None:
        tmps["state"].write_bytes(b"half")
        raise error("interrupted")

    with pytest.raises(error):
        cache.publish(key, half_written, {})
    assert cache.lookup(key) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_killed_savers_temporary_is_removed_by_the_next_build(tmp_path):
    cache = StateCache(tmp_path)
    key = _state_key("c")
    dead = tmp_path / f".{key.digest}.state.999999999.0.tmp"  # no such pid
    dead.write_bytes(b"half")
    mine = cache.scratch(key, "running")  # a live process's file
    mine.write_bytes(b"busy")
    with cache.building(key, timeout=1):
        pass
    assert not dead.exists() and mine.exists()
    assert cache.lookup(key) is None


def test_the_build_lock_is_exclusive_and_bounded(tmp_path):
    cache = StateCache(tmp_path)
    key = _state_key("d")
    with cache.building(key, timeout=1):
        started = time.monotonic()
        busy = pytest.raises(MachineError, match="another process has been building")
        with busy, cache.building(key, timeout=0.3):
            pass
        assert time.monotonic() - started < 5
    with cache.building(key, timeout=1):  # released
        pass


def test_least_recently_used_states_go_first(tmp_path):
    probe = StateCache(tmp_path / "probe")
    found = probe.publish(_state_key("z"), _write(), {})
    size = sum(path.stat().st_blocks * 512 for path in found.paths.values())  # one entry
    cache = StateCache(tmp_path / "lru", cap_bytes=int(size * 2.5))
    keys = [_state_key(name) for name in "efg"]
    for index, key in enumerate(keys[:2]):
        cache.publish(key, _write(), {})
        os.utime(cache.state_path(key), (1000 + index, 1000 + index))
    assert cache.lookup(keys[0]) is not None  # used now: the most recent
    cache.publish(keys[2], _write(), {})
    assert cache.lookup(keys[1]) is None  # least recently used: evicted
    assert cache.lookup(keys[0]) is not None and cache.lookup(keys[2]) is not None
    assert not list((tmp_path / "lru").glob(f"{keys[1].digest}.*"))


def test_discard_deletes_a_state(tmp_path):
    cache = StateCache(tmp_path)
    key = _state_key("h")
    cache.publish(key, _write(), {})
    cache.discard(key)
    assert cache.lookup(key) is None and cache.states() == []


def _loader(path: Path) -> str:
    """Stands in for a Debian spec's unpacked ld-linux: `LOADER --library-path DIRS BINARY
    ARGS` runs BINARY with ARGS (and prints its own version when asked directly)."""
    path.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && echo "ld.so (Debian GLIBC 2.41-12)" && exit 0\n'
        'shift 2\nexec "$@"\n'
    )
    path.chmod(0o755)
    return str(path)


def _debian_key(tmp_path: Path, binary: str, origin: str = "trixie 1:10.0.13") -> StateKey:
    loader = _loader(tmp_path / "ld-linux-x86-64.so.2")
    command = QemuCommand(
        "debian:trixie/qemu-system-x86",
        (loader, "--library-path", str(tmp_path), binary),
        (),
        origin,
    )
    return state_key([*command.argv, "-m", "512"], {"image": "x"}, command)


def test_a_debian_spec_is_keyed_by_its_qemu_binary_not_its_loader(tmp_path):
    """argv[0] of a Debian spec is the unpacked loader: the key must name the QEMU binary,
    its own version and content digest, and the spec with its package version."""
    binary = Path(_fake_qemu(tmp_path / "qemu-system-x86_64", "10.0.13"))
    key = _debian_key(tmp_path, str(binary))
    qemu = key.inputs["qemu"]
    assert qemu["binary"] == str(binary.resolve())
    assert qemu["version"] == "QEMU emulator version 10.0.13"
    assert qemu["spec"] == "debian:trixie/qemu-system-x86" and qemu["origin"].endswith("10.0.13")
    assert _debian_key(tmp_path, str(binary), "trixie 1:10.0.14").digest != key.digest


def test_a_qemu_binary_changed_in_place_is_another_qemu(tmp_path):
    """Same path, size, mtime and version text, other content: old states are not reused."""
    binary = Path(_fake_qemu(tmp_path / "qemu-system-x86_64", "10.0.13"))
    before = _debian_key(tmp_path, str(binary))
    stat = binary.stat()
    binary.write_text(binary.read_text().replace("alias of", "alias_of"))
    os.utime(binary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert binary.stat().st_size == stat.st_size
    after = _debian_key(tmp_path, str(binary))
    assert after.inputs["qemu"]["version"] == before.inputs["qemu"]["version"]
    assert after.digest != before.digest
