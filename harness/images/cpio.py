"""A newc cpio writer, so the initramfs is built without cpio(1) or fakeroot.

Writing the archive ourselves lets every file be owned by root and carry exact modes no matter
who runs the build, and keeps the output reproducible (fixed mtimes).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFLNK = 0o120000


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, a file (from disk or bytes) or a symlink."""

    path: str
    mode: int
    data: bytes | Path | None = None
    link_target: str | None = None


class CpioWriter:
    """Streams newc entries into a gzip file; parents must be added before children."""

    def __init__(self, out: BinaryIO) -> None:
        self._gz = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0)
        self._ino = 1000

    def add(self, entry: Entry) -> None:
        body = self._body(entry)
        self._header(entry.path.lstrip("/"), entry.mode, len(body))
        self._gz.write(body)
        self._pad(len(body))

    def close(self) -> None:
        self._header("TRAILER!!!", 0, 0)
        self._gz.close()

    def _body(self, entry: Entry) -> bytes:
        if entry.link_target is not None:
            return entry.link_target.encode()
        if isinstance(entry.data, Path):
            return entry.data.read_bytes()
        return entry.data or b""

    def _header(self, name: str, mode: int, size: int) -> None:
        self._ino += 1
        name_bytes = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name_bytes), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._gz.write(header + name_bytes)
        self._pad(len(header) + len(name_bytes))

    def _pad(self, length: int) -> None:
        self._gz.write(b"\0" * (-length % 4))


def parents(path: str) -> Iterator[str]:
    """Yield every ancestor directory of an archive path, outermost first."""
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])
