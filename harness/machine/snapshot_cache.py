"""Saved guest states on disk, keyed by everything that makes a state loadable and equivalent.

Layout under the root (default `<image cache>/states`):
    <key>.ram     the guest RAM template of a booted, ready guest (sparse)
    <key>.state   its device state (a QEMU migration stream without RAM); written last, so
                  its presence marks a complete entry
    <key>.json    what the key was made of, and facts the restore needs (kernel release)
    <key>.lock    flock: one process builds a state, concurrent ones wait and then reuse it
    .<key>.<part>.<pid>.<n>.tmp   a save in progress (or the RAM of the guest being saved)
    builds.log    one line per state built (which key, which process): proves "built once"

Files exist under their final names only complete and fsync'ed (written to a temporary name,
fsync, rename, fsync the directory), so an interrupted save (Ctrl-C, SIGKILL, a full disk)
leaves at most temporaries that nothing loads and the next build removes. The entries' total
size (allocated blocks) is capped; the least recently used (the state file's mtime, touched on
every use) go first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness.images.qemu_pkg import QemuCommand
from harness.machine.errors import MachineError
from harness.machine.qemu_spec import run_command

#: Bump when what a state holds or how it is made changes (old states are then never used).
#: 2: the QEMU is keyed by its binary's digest and its spec's identity (1 keyed argv[0],
#: a Debian spec's loader).
STATE_FORMAT = 2
#: The shipped scenarios are 26 kinds (each declares its own boot ports) of ~121 MiB each:
#: under a 2 GiB cap a full run evicts every state before its next use (LRU on a cycle).
DEFAULT_CAP_BYTES = 4 * 1024**3
_STALE_TMP_SECONDS = 3600
_tmp_counter = itertools.count()


@dataclass(frozen=True)
class StateKey:
    digest: str
    inputs: dict[str, Any]

    @property
    def short(self) -> str:
        return self.digest[:12]


def _normalized_argv(argv: list[str]) -> list[str]:
    """The command line without what differs between two QEMUs of one kind: the QMP and
    console fds, the chardev socket paths (fresh per QEMU) and the process name."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "-name":
            skip = True
            continue
        arg = re.sub(r"\bfd=\d+", "fd=?", arg)
        arg = re.sub(r"\b(mem-)?path=[^,]*", r"\1path=?", arg)
        arg = re.sub(r"\bshare=(on|off)", "share=?", arg)  # on to save, off to restore
        out.append(arg)
    return out


@cache
def _file_digest(path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """SHA-256 of a file's content (memoized per path, size, mtime and ctime: once per
    process; ctime too because a rewrite that keeps size and mtime still moves it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def qemu_identity(command: QemuCommand) -> dict[str, str]:
    """What makes two QEMUs the same for a saved state: the spec's identity (what it names
    and where it came from: a Debian spec's package version), the qemu-system binary's
    resolved path and content digest (a rebuilt QEMU of the same version string, or one
    replaced in place, is another QEMU), and its own `--version`.

    Why not argv[0]: a Debian spec runs through its unpacked dynamic loader
    (`ld-linux-x86-64.so.2 --library-path ... usr/bin/qemu-system-x86_64`), so argv[0] is the
    loader, whose version and content say nothing about the QEMU."""
    binary = _qemu_binary(command.argv)
    stat = binary.stat()
    return {
        "spec": command.spec,
        "origin": command.origin,
        "binary": str(binary),
        "digest": file_digest(binary),
        "version": _qemu_version(command, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns),
    }


def _qemu_binary(argv: tuple[str, ...]) -> Path:
    """The qemu-system-* file of a QEMU command (argv[0] for a plain binary)."""
    found = next((a for a in argv if Path(a).name.startswith("qemu-system-")), argv[0])
    return Path(found).resolve()


@cache
def _qemu_version(command: QemuCommand, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """`--version` run as the spec runs QEMU (memoized per binary size, mtime and ctime)."""
    failed = f"could not ask QEMU {command.spec} for its version"
    return run_command(command, ["--version"], 30, failed).stdout.strip()


def state_key(
    argv: list[str], extra: dict[str, str] | None = None, qemu: QemuCommand | None = None
) -> StateKey:
    """The key of a guest started with `argv` (Machine.argv, which starts with `qemu`'s own
    argv: the binary, or a Debian spec's loader, library path and binary): the whole command
    line (accel, memory, machine type, kernel command line, devices with their properties:
    controllers and boot ports by name, nr, console, controller and backend), the content of
    every file it names (kernel, initrd), the QEMU's identity (qemu_identity; without
    `qemu`, argv[0] is taken as a plain binary), and `extra` (what else the caller knows
    matters, e.g. the agent's hash)."""
    normalized = _normalized_argv(argv)
    files = {arg: file_digest(Path(arg)) for arg in normalized[1:] if _is_file(arg)}
    inputs: dict[str, Any] = {
        "format": STATE_FORMAT,
        "qemu": qemu_identity(qemu or QemuCommand(argv[0], (argv[0],))),
        "argv": normalized,
        "files": files,
        "extra": dict(sorted((extra or {}).items())),
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return StateKey(digest[:32], inputs)


def _is_file(arg: str) -> bool:
    return arg.startswith("/") and Path(arg).is_file()


#: The files of an entry, in publishing order: the last one marks a complete entry.
PARTS = ("ram", "state")


@dataclass(frozen=True)
class CachedState:
    paths: dict[str, Path]
    meta: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.paths["state"]


class StateCache:
    def __init__(self, root: Path, cap_bytes: int = DEFAULT_CAP_BYTES) -> None:
        self.root = root
        self.cap_bytes = cap_bytes

    def state_path(self, key: StateKey, part: str = "state") -> Path:
        return self.root / f"{key.digest}.{part}"

    def scratch(self, key: StateKey, part: str) -> Path:
        """A temporary name in the cache (same file system as the entries: renames are
        atomic); removed by `building` once its process is gone."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".{key.digest}.{part}.{os.getpid()}.{next(_tmp_counter)}.tmp"

    def _meta_path(self, key: StateKey) -> Path:
        return self.root / f"{key.digest}.json"

    def lookup(self, key: StateKey) -> CachedState | None:
        """The complete state of `key` (its use time touched for LRU), or None."""
        paths = {part: self.state_path(key, part) for part in PARTS}
        try:
            meta = json.loads(self._meta_path(key).read_text())
            if not all(path.is_file() for path in paths.values()):
                return None
            os.utime(paths["state"])
        except (OSError, ValueError):
            return None
        return CachedState(paths, meta)

    def discard(self, key: StateKey) -> None:
        for path in (self._meta_path(key), *(self.state_path(key, p) for p in PARTS)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def building(self, key: StateKey, timeout: float) -> Iterator[None]:
        """Hold the build lock of `key` (waits at most `timeout` for another builder)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{key.digest}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as error:
                    if error.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() > deadline:
                    raise MachineError(
                        f"another process has been building the saved state {key.short} for "
                        f"{timeout:.0f} s (lock {self.root / (key.digest + '.lock')})"
                    )
                time.sleep(0.05)  # flock has no timed wait
            self._remove_stale_temporaries()
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def publish(
        self, key: StateKey, write: Callable[[dict[str, Path]], None], meta: dict[str, Any]
    ) -> CachedState:
        """Run `write({part: temporary path})`, then make the files the entry of `key`.

        Whatever interrupts `write` (an exception, KeyboardInterrupt) removes the temporaries;
        a killed process leaves some that `building` removes later; neither is ever loaded."""
        tmps = {part: self.scratch(key, part) for part in PARTS}
        try:
            write(tmps)
            for tmp in tmps.values():
                _fsync(tmp)
            size = sum(_allocated(tmp) for tmp in tmps.values())
            meta = {**meta, "key": key.inputs, "bytes": size, "pid": os.getpid()}
            _write_atomically(self._meta_path(key), json.dumps(meta, indent=1).encode())
            for part in PARTS:
                os.replace(tmps[part], self.state_path(key, part))
            _fsync_dir(self.root)
        except BaseException:
            for tmp in tmps.values():
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            raise
        with (self.root / "builds.log").open("a") as log:
            log.write(f"{key.digest} pid={os.getpid()} bytes={meta['bytes']}\n")
        self.evict(keep=key)
        return CachedState({part: self.state_path(key, part) for part in PARTS}, meta)

    def states(self) -> list[Path]:
        return sorted(self.root.glob("*.state")) if self.root.is_dir() else []

    def evict(self, keep: StateKey | None = None) -> list[Path]:
        """Delete least recently used entries until their total is within the cap."""
        entries = []
        for path in self.states():
            with contextlib.suppress(FileNotFoundError):
                size = sum(_allocated(path.with_suffix(f".{part}")) for part in PARTS)
                entries.append((path.stat().st_mtime, size, path))
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, path in sorted(entries):
            if total <= self.cap_bytes:
                break
            if keep is not None and path == self.state_path(keep):
                continue
            for suffix in (".state", ".json", *(f".{part}" for part in PARTS)):
                path.with_suffix(suffix).unlink(missing_ok=True)
            total -= size
            removed.append(path)
        return removed

    def _remove_stale_temporaries(self) -> None:
        """Temporaries of dead processes (or very old ones) are interrupted saves."""
        for tmp in self.root.glob(".*.tmp"):
            parts = tmp.name.split(".")  # .<name>[.<part>].<pid>.<n>.tmp
            pid = int(parts[-3]) if len(parts) > 3 and parts[-3].isdigit() else 0
            with contextlib.suppress(FileNotFoundError):
                old = time.time() - tmp.stat().st_mtime > _STALE_TMP_SECONDS
                if old or not _alive(pid):
                    tmp.unlink()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _allocated(path: Path) -> int:
    """Bytes on disk (a RAM template is sparse), 0 for a missing file."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_tmp_counter)}.tmp")
    try:
        tmp.write_bytes(data)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
