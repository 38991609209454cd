"""QEMUs under test: a binary on PATH, a path, or another Debian release's package.

`debian:SUITE/PACKAGE` (e.g. `debian:trixie/qemu-system-x86`) is resolved and downloaded through
the builder's private apt state for that suite (apt.suite_apt), so the machine's sources and
its installed packages are never touched. The package and its whole dependency closure are
unpacked into one directory under the image cache (`qemu/<suite>-<package>-<key>/`, keyed by
the exact package versions, built once: later runs reuse it) and run from there:

    <root>/usr/lib64/ld-linux-x86-64.so.2 --library-path <root's lib dirs> \
        <root>/usr/bin/qemu-system-x86_64 -L <root>/usr/share/qemu -L <root>/usr/share/seabios

with QEMU_MODULE_DIR pointing at the unpacked module directory. Why the unpacked loader: the
release's QEMU needs its own glibc (trixie's 2.41 on a bookworm host); the loader it was
linked against, with --library-path, runs it without installing or patching anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.images.apt import extract_deb, suite_apt
from harness.images.errors import ImageBuildError

DEFAULT_QEMU = "qemu-system-x86_64"
_DEBIAN_PREFIX = "debian:"
_SUITE = re.compile(r"[a-z][a-z0-9-]*")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9.+-]+")
_LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib64", "lib64")
_LOADERS = ("usr/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2")
_FIRMWARE_DIRS = ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu")
_MODULE_DIR = "usr/lib/x86_64-linux-gnu/qemu"

#: The ways to name a QEMU, for every --help and error that takes one.
QEMU_SPEC_FORMS = (
    "a binary on PATH (e.g. qemu-system-x86_64), a path to one, or debian:SUITE/PACKAGE "
    "(e.g. debian:trixie/qemu-system-x86: that release's QEMU, unpacked into the cache and run "
    "with its own libraries)"
)


@dataclass(frozen=True)
class QemuSpec:
    """What the user asked for: a binary (`binary`, a name or a path) or a Debian package."""

    text: str
    binary: str | None = None
    suite: str | None = None
    package: str | None = None

    def describe(self) -> str:
        if self.suite:
            return f"package {self.package} from Debian {self.suite}"
        return f"binary {self.binary}"


@dataclass(frozen=True)
class QemuCommand:
    """How to run one QEMU: `argv` comes first on every command line (the loader and its
    options, the binary, `-L` firmware dirs), `env` is added to the environment."""

    spec: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    origin: str = ""

    def environment(self) -> dict[str, str] | None:
        """The environment to start it with (None: inherit unchanged)."""
        return {**os.environ, **dict(self.env)} if self.env else None


def parse_qemu_spec(text: str) -> QemuSpec:
    """BINARY | PATH | debian:SUITE/PACKAGE; a path must exist (checked here, at start)."""
    text = text.strip()
    if not text:
        raise ImageBuildError("empty QEMU specification")
    if text.startswith(_DEBIAN_PREFIX):
        suite, slash, package = text.removeprefix(_DEBIAN_PREFIX).partition("/")
        if not slash or not _SUITE.fullmatch(suite) or not _PACKAGE.fullmatch(package):
            raise ImageBuildError(
                f"QEMU {text!r}: write debian:SUITE/PACKAGE, e.g. debian:trixie/qemu-system-x86"
            )
        return QemuSpec(text, suite=suite, package=package)
    if "/" in text:
        path = Path(text).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ImageBuildError(f"QEMU binary {path} does not exist or is not executable")
        return QemuSpec(text, binary=str(path.resolve()))
    return QemuSpec(text, binary=text)


def prepare_qemu(spec: QemuSpec, cache_dir: Path) -> QemuCommand:
    """The command line prefix that runs `spec` (fetching and unpacking a package once)."""
    if spec.binary is not None:
        found = shutil.which(spec.binary)
        if found is None:
            raise ImageBuildError(
                f"QEMU binary {spec.binary!r} not found: install it (apt-get install "
                "qemu-system-x86, or run sh .ci/bootstrap) or name one with --hil-qemu "
                f"({QEMU_SPEC_FORMS})"
            )
        return QemuCommand(spec.text, (found,), origin=spec.describe())
    assert spec.suite is not None and spec.package is not None
    apt = suite_apt(spec.suite, cache_dir)
    packages = apt.closure([spec.package])
    key = hashlib.sha256(repr(sorted(packages)).encode()).hexdigest()[:12]
    root = cache_dir / "qemu" / f"{spec.suite}-{spec.package}-{key}"
    if not root.is_dir():
        _unpack(apt.download(packages), root)
    version = next((p.version for p in packages if p.name == spec.package), "?")
    return unpacked_command(spec.text, root, f"{spec.describe()} {version}")


def _unpack(debs: list[Path], root: Path) -> None:
    """Every package of the closure into `root`, published by one rename (xdist workers that
    race both unpack; the first rename wins and the other copy is dropped)."""
    partial = root.with_name(f"{root.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    for deb in debs:
        extract_deb(deb, partial)
    try:
        partial.rename(root)
    except OSError:
        if not root.is_dir():
            raise
        shutil.rmtree(partial, ignore_errors=True)


def unpacked_command(spec: str, root: Path, origin: str) -> QemuCommand:
    """Loader + library path + binary + firmware dirs of an unpacked QEMU tree."""
    loader = next((root / p for p in _LOADERS if (root / p).exists()), None)
    binaries = sorted((root / "usr/bin").glob("qemu-system-*"))
    if loader is None or not binaries:
        raise ImageBuildError(
            f"{root} has no dynamic loader or no usr/bin/qemu-system-*: name a qemu-system-* "
            "package (e.g. debian:trixie/qemu-system-x86)"
        )
    binary = next((b for b in binaries if b.name == DEFAULT_QEMU), binaries[0])
    libraries = ":".join(str(root / d) for d in _LIB_DIRS if (root / d).is_dir())
    argv = [str(loader), "--library-path", libraries, str(binary)]
    for firmware in _FIRMWARE_DIRS:
        if (root / firmware).is_dir():
            argv += ["-L", str(root / firmware)]
    return QemuCommand(spec, tuple(argv), (("QEMU_MODULE_DIR", str(root / _MODULE_DIR)),), origin)
