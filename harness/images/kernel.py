"""Kernels under test: where they come from, and the few modules the guest needs from them.

A kernel is named on the command line in one of four ways (see `parse_kernel_spec`); whatever
the source, the builder ends up with a vmlinuz, a version string and optionally a module tree
(none for a kernel with the drivers built in).
Only the requested modules and their dependencies (per depmod's modules.dep) enter the guest,
decompressed, because busybox insmod cannot read .ko.xz/.ko.zst.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import re
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.images.apt import Apt, extract_deb, require_tool, suite_apt
from harness.images.errors import ImageBuildError

log = logging.getLogger("hil.images")

_COMPRESSED_SUFFIXES = (".xz", ".zst", ".gz")
_DEBIAN_PREFIX = "debian:"
_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9.+-]+")
_DEB_MAGIC = b"!<arch>\ndebian-binary"

#: The ways to name a kernel (`parse_kernel_spec`), for every --help that takes one.
KERNEL_SPEC_FORMS = (
    "a Debian package name (e.g. linux-image-cloud-amd64), debian:SUITE/PACKAGE (e.g. "
    "debian:trixie/linux-image-cloud-amd64), FILE.deb, or VMLINUZ[:MODULES_DIR] (a bzImage, "
    "with its lib/modules/<version> directory unless the drivers are built in)"
)


@dataclass(frozen=True)
class KernelSpec:
    """What the user asked for: exactly one of package / deb / vmlinuz is set.

    `suite` (with `package`) names another Debian release, resolved through a private apt
    state so the machine's own sources are never touched.
    """

    package: str | None = None
    deb: Path | None = None
    vmlinuz: Path | None = None
    modules_dir: Path | None = None
    suite: str | None = None

    def describe(self) -> str:
        if self.package and self.suite:
            return f"package {self.package} from Debian {self.suite}"
        if self.package:
            return f"package {self.package}"
        if self.deb:
            return f"deb {self.deb}"
        return f"vmlinuz {self.vmlinuz}" + (
            f" + modules {self.modules_dir}" if self.modules_dir else ""
        )


@dataclass(frozen=True)
class PreparedKernel:
    vmlinuz: Path
    version: str
    modules_root: Path | None
    origin: str


def parse_kernel_spec(text: str) -> KernelSpec:
    """PACKAGE | debian:SUITE/PACKAGE | FILE.deb | VMLINUZ[:MODULES_DIR].

    MODULES_DIR is that kernel's lib/modules/<version>; without it the kernel must have the
    recipe's drivers built in. Files are checked for their kind here (a .deb's ar header, a
    bzImage's setup header), so a wrong file is refused before anything is built or booted.
    """
    text = text.strip()
    if not text:
        raise ImageBuildError("empty kernel specification")
    if text.startswith(_DEBIAN_PREFIX):
        return _parse_debian_suite(text)
    if text.endswith(".deb"):
        deb = Path(text).expanduser()
        _require_file(deb, "kernel .deb")
        _require_deb(deb)
        return KernelSpec(deb=deb.resolve())
    if "/" in text or text.startswith("."):
        vmlinuz_text, _, modules_text = text.partition(":")
        vmlinuz = Path(vmlinuz_text).expanduser()
        _require_file(vmlinuz, "kernel image")
        check_kernel_image(vmlinuz)
        modules = Path(modules_text).expanduser() if modules_text else None
        if modules is not None and not (modules / "modules.order").exists():
            raise ImageBuildError(
                f"kernel modules directory {modules} has no modules.order: give the "
                "lib/modules/<version> directory of that kernel"
            )
        return KernelSpec(
            vmlinuz=vmlinuz.resolve(), modules_dir=modules.resolve() if modules else None
        )
    if not _PACKAGE_NAME.fullmatch(text):
        raise ImageBuildError(
            f"kernel {text!r} is neither an existing file nor a Debian package name"
        )
    return KernelSpec(package=text)


def _parse_debian_suite(text: str) -> KernelSpec:
    suite, slash, package = text.removeprefix(_DEBIAN_PREFIX).partition("/")
    if not slash or not re.fullmatch(r"[a-z][a-z0-9-]*", suite):
        raise ImageBuildError(
            f"kernel {text!r}: write debian:SUITE/PACKAGE, e.g. "
            "debian:trixie/linux-image-cloud-amd64"
        )
    if not _PACKAGE_NAME.fullmatch(package):
        raise ImageBuildError(f"kernel {text!r}: {package!r} is not a Debian package name")
    return KernelSpec(package=package, suite=suite)


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise ImageBuildError(f"{what} {path} does not exist (or is not a file)")


def _require_deb(deb: Path) -> None:
    with deb.open("rb") as f:
        if f.read(len(_DEB_MAGIC)) != _DEB_MAGIC:
            raise ImageBuildError(
                f"{deb} is not a Debian package (no ar archive starting with debian-binary); "
                "give a linux-image-*.deb"
            )


def check_kernel_image(vmlinuz: Path) -> None:
    """Refuse an obviously wrong file early (bzImage carries 'HdrS' at offset 0x202)."""
    with vmlinuz.open("rb") as f:
        f.seek(0x202)
        magic = f.read(4)
    if magic != b"HdrS":
        raise ImageBuildError(
            f"{vmlinuz} is not an x86 Linux kernel image (no bzImage 'HdrS' header); "
            "give a vmlinuz / bzImage"
        )


def prepare_kernel(spec: KernelSpec, apt: Apt, cache_dir: Path) -> PreparedKernel:
    if spec.vmlinuz is not None:
        version = (
            spec.modules_dir.name
            if spec.modules_dir
            else bzimage_release(spec.vmlinuz) or f"file-{spec.vmlinuz.name}"
        )
        return PreparedKernel(spec.vmlinuz, version, spec.modules_dir, spec.describe())
    if spec.package is not None:
        if spec.suite is not None:
            apt = suite_apt(spec.suite, cache_dir)
        package = apt.kernel_package(spec.package)
        (deb,) = apt.download([package])
    else:
        assert spec.deb is not None
        deb = spec.deb
    return _unpack_kernel_deb(deb, cache_dir / "kernels" / deb.stem, spec.describe())


def bzimage_release(vmlinuz: Path) -> str | None:
    """The release string (`uname -r`) a bzImage carries in its setup header, if any.

    Why: a bare vmlinuz (drivers built in, no modules dir) has no other name for its version,
    and the version is what results and behaviour switches are keyed by.
    """
    with vmlinuz.open("rb") as f:
        header = f.read(0x210)
        if len(header) < 0x210 or header[0x202:0x206] != b"HdrS":
            return None
        (protocol,) = struct.unpack_from("<H", header, 0x206)
        (pointer,) = struct.unpack_from("<H", header, 0x20E)
        if protocol < 0x200 or pointer == 0:
            return None
        f.seek(pointer + 0x200)
        text = f.read(256).split(b"\0", 1)[0].decode("ascii", "replace").split()
    return text[0] if text else None


def _unpack_kernel_deb(deb: Path, target: Path, origin: str) -> PreparedKernel:
    if not target.exists():
        log.info("unpacking %s", deb.name)
        partial = target.with_name(target.name + ".partial")
        extract_deb(deb, partial)
        partial.rename(target)
    vmlinuzes = sorted((target / "boot").glob("vmlinuz-*"))
    if not vmlinuzes:
        raise ImageBuildError(f"{deb} contains no boot/vmlinuz-*: it is not a kernel image package")
    version = vmlinuzes[0].name.removeprefix("vmlinuz-")
    modules = next(
        (
            p
            for p in (target / "lib/modules" / version, target / "usr/lib/modules" / version)
            if p.is_dir()
        ),
        None,
    )
    return PreparedKernel(vmlinuzes[0], version, modules, origin)


def module_load_order(kernel: PreparedKernel, wanted: list[str]) -> list[Path]:
    """Module files (relative to the module root) to insmod, dependencies first."""
    if kernel.modules_root is None:
        return []
    deps = _modules_dep(kernel)
    by_name = {_module_name(path): path for path in deps}
    builtin = _builtin_names(kernel.modules_root)
    order: list[str] = []

    def visit(path: str) -> None:
        for dependency in deps[path]:
            visit(dependency)
        if path not in order:
            order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin:
            raise ImageBuildError(
                f"kernel {kernel.version} has no module {name!r} (neither loadable nor built in)"
            )
    return [Path(p) for p in order]


def _module_name(path: str) -> str:
    name = Path(path).name
    for suffix in _COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def _builtin_names(root: Path) -> set[str]:
    builtin = root / "modules.builtin"
    if not builtin.exists():
        return set()
    return {_module_name(line) for line in builtin.read_text().split()}


def _modules_dep(kernel: PreparedKernel) -> dict[str, list[str]]:
    """depmod's modules.dep, computed with -n (to stdout): the kernel's tree is never written."""
    depmod = require_tool("depmod", "kmod")
    assert kernel.modules_root is not None
    with tempfile.TemporaryDirectory(prefix="hil-depmod-") as scratch:
        base = Path(scratch)
        for modules_dir in ("lib/modules", "usr/lib/modules"):
            (base / modules_dir).mkdir(parents=True)
            (base / modules_dir / kernel.version).symlink_to(kernel.modules_root)
        result = subprocess.run(
            [depmod, "-b", str(base), "-n", kernel.version],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise ImageBuildError(
            f"depmod failed for kernel {kernel.version} ({kernel.modules_root}): "
            f"{result.stderr.strip()[-1000:]}"
        )
    deps: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("#"):
            break  # modules.dep is the first section of the dry-run output
        module, _, rest = line.partition(":")
        deps[module] = rest.split()
    if not deps:
        raise ImageBuildError(f"depmod found no modules in {kernel.modules_root}")
    return deps


def read_module(path: Path) -> bytes:
    """The module's ELF bytes, decompressed as busybox insmod needs them."""
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".zst":
        zstd = require_tool("zstd", "zstd")
        return subprocess.run([zstd, "-dc", str(path)], capture_output=True, check=True).stdout
    return path.read_bytes()


def uncompressed_name(path: Path) -> str:
    name = path.name
    for suffix in _COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    return name
