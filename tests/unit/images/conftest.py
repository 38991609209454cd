"""Helpers shared by the image tests: a minimal bzImage header carrying a release string."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest


def fake_bzimage(path: Path, release: str) -> Path:
    """Just enough of a bzImage for the builder: 'HdrS', protocol 2.15, kernel_version."""
    data = bytearray(0x600)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, 0x020F)
    struct.pack_into("<H", data, 0x20E, 0x200)  # the string sits at 0x200 + 0x200
    text = f"{release} (test@example) #1 SMP".encode() + b"\0"
    data[0x400 : 0x400 + len(text)] = text
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def make_bzimage(tmp_path):
    return lambda release: fake_bzimage(tmp_path / f"vmlinuz-{release}", release)
