"""Just enough ELF reading to resolve a binary's shared libraries without ldd.

Why not ldd: it executes the binary with the host's loader, which is wrong for libraries that
live only in the staging tree of downloaded packages (and unsafe for untrusted inputs).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_PT_INTERP = 3
_PT_DYNAMIC = 2
_PT_LOAD = 1
_DT_NEEDED = 1
_DT_STRTAB = 5


@dataclass(frozen=True)
class ElfDeps:
    """The loader and the sonames a 64-bit little-endian ELF file asks for."""

    interpreter: str | None
    needed: tuple[str, ...]


def read_deps(path: Path) -> ElfDeps:
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segments = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    interpreter = None
    dynamic = None
    loads = []
    for p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align in segments:
        if p_type == _PT_INTERP:
            interpreter = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
    if dynamic is None:
        return ElfDeps(interpreter, ())
    entries = [struct.unpack_from("<qQ", data, dynamic[0] + i) for i in range(0, dynamic[1], 16)]
    strtab_vaddr = next(value for tag, value in entries if tag == _DT_STRTAB)
    strtab = _vaddr_to_offset(strtab_vaddr, loads)
    needed = tuple(
        data[strtab + value : data.index(b"\0", strtab + value)].decode()
        for tag, value in entries
        if tag == _DT_NEEDED
    )
    return ElfDeps(interpreter, needed)


def _vaddr_to_offset(vaddr: int, loads: list[tuple[int, int, int]]) -> int:
    for seg_vaddr, seg_offset, seg_size in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_size:
            return vaddr - seg_vaddr + seg_offset
    raise ValueError(f"address {vaddr:#x} is in no loadable segment")
