"""Build a bootable guest (vmlinuz + initramfs + SSH keys) from a recipe and a kernel.

The initramfs is three concatenated gzip'd cpio segments, each cached on its own key, because
they change at very different rates: the userland (packages, init, keys), the kernel modules
(one set per kernel under test) and the guest agent (edited by us all the time). The kernel
unpacks concatenated segments in order, so a new kernel or agent costs milliseconds, not a
rebuild.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from harness.images import elf
from harness.images.apt import Apt, Package, extract_deb
from harness.images.cpio import S_IFDIR, S_IFLNK, S_IFREG, CpioWriter, Entry, parents
from harness.images.errors import ImageBuildError
from harness.images.kernel import (
    KernelSpec,
    PreparedKernel,
    check_kernel_image,
    module_load_order,
    parse_kernel_spec,
    prepare_kernel,
    read_module,
    uncompressed_name,
)
from harness.images.recipe import Recipe, find_recipe, load_recipe

log = logging.getLogger("hil.images")

BUILDER_VERSION = "1"
_HARNESS_DIR = Path(__file__).resolve().parents[1]
INIT_DIR = Path(__file__).resolve().parent / "init"
AGENT_DIR = _HARNESS_DIR / "guest" / "agent"
_LIB_DIRS = (
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
)
_MERGED_TOPS = ("bin", "sbin", "lib", "lib64")


def default_cache_dir() -> Path:
    configured = os.environ.get("HIL_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "virtio-serial-hil"


@dataclass(frozen=True)
class GuestImage:
    """Everything needed to boot and reach a guest; `manifest.json` in `directory` holds it."""

    directory: Path
    recipe: str
    kernel: Path
    initramfs: Path
    kernel_version: str
    kernel_origin: str
    cmdline: str
    client_key: Path
    host_public_key: str
    packages: tuple[str, ...]

    @classmethod
    def load(cls, directory: Path) -> GuestImage:
        data = json.loads((directory / "manifest.json").read_text())
        return cls(
            directory=directory,
            recipe=data["recipe"],
            kernel=Path(data["kernel"]),
            initramfs=Path(data["initramfs"]),
            kernel_version=data["kernel_version"],
            kernel_origin=data["kernel_origin"],
            cmdline=data["cmdline"],
            client_key=Path(data["client_key"]),
            host_public_key=data["host_public_key"],
            packages=tuple(data["packages"]),
        )

    def save(self) -> None:
        data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        data["packages"] = list(self.packages)
        (self.directory / "manifest.json").write_text(json.dumps(data, indent=2))


def build_image(
    recipe_name: str | None = None,
    kernel: str | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
) -> GuestImage:
    """Build (or fetch from the cache) the image for `recipe_name` booting `kernel`."""
    recipe = load_recipe(find_recipe(recipe_name))
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache):
        return _Builder(recipe, parse_kernel_spec(kernel or recipe.kernel), cache, force).build()


def kernel_release(
    kernel: str | None, recipe_name: str | None = None, cache_dir: Path | None = None
) -> str:
    """The release `kernel` (default: the recipe's) would boot, without building an image.

    Why: a model-only run still picks behaviour switches per kernel release.
    """
    recipe = load_recipe(find_recipe(recipe_name))
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache):
        spec = parse_kernel_spec(kernel or recipe.kernel)
        return prepare_kernel(spec, Apt(cache), cache).version


@contextmanager
def _build_lock(cache: Path) -> Iterator[None]:
    """One builder at a time per cache (pytest-xdist workers all ask for the same image)."""
    with (cache / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _Builder:
    def __init__(self, recipe: Recipe, kernel: KernelSpec, cache: Path, force: bool) -> None:
        self.recipe = recipe
        self.kernel_spec = kernel
        self.cache = cache
        self.force = force
        self.apt = Apt(cache)

    def build(self) -> GuestImage:
        started = time.monotonic()
        userland_packages = self.apt.closure(self.recipe.packages)
        kernel = prepare_kernel(self.kernel_spec, self.apt, self.cache)
        check_kernel_image(kernel.vmlinuz)
        key = _digest(
            BUILDER_VERSION,
            self.recipe.source_text,
            repr(userland_packages),
            _file_identity(kernel.vmlinuz),
            kernel.version,
            _tree_digest(INIT_DIR),
            _tree_digest(AGENT_DIR),
        )
        directory = self.cache / "images" / f"{self.recipe.name}-{kernel.version}-{key}"
        if (directory / "manifest.json").exists() and not self.force:
            log.info(
                "image %r for kernel %s: cached in %s", self.recipe.name, kernel.version, directory
            )
            return GuestImage.load(directory)
        log.info(
            "building image %r for kernel %s -> %s", self.recipe.name, kernel.version, directory
        )
        userland = self._userland(userland_packages)
        modules = self._modules_segment(kernel)
        agent = self._agent_segment()
        image = self._assemble(directory, kernel, userland, modules, agent, userland_packages)
        log.info("image ready in %.1f s: %s", time.monotonic() - started, directory)
        return image

    # -- userland -------------------------------------------------------------------------

    def _userland(self, packages: list[Package]) -> Path:
        key = _digest(
            BUILDER_VERSION, self.recipe.source_text, repr(packages), _tree_digest(INIT_DIR)
        )
        directory = self.cache / "userland" / f"{self.recipe.name}-{key}"
        if (directory / "userland.cpio.gz").exists() and not self.force:
            return directory
        debs = self.apt.download(packages)
        with tempfile.TemporaryDirectory(prefix="hil-staging-") as scratch:
            staging = _Staging(Path(scratch))
            for number, deb in enumerate(debs, 1):
                log.info("unpacking [%d/%d] %s", number, len(debs), deb.name)
                staging.add_package(deb)
            partial = Path(tempfile.mkdtemp(prefix="userland-", dir=self.cache))
            try:
                self._make_keys(staging, partial)
                with (partial / "userland.cpio.gz").open("wb") as out:
                    self._write_userland(staging, partial, out)
                if directory.exists():
                    shutil.rmtree(directory)
                directory.parent.mkdir(parents=True, exist_ok=True)
                partial.rename(directory)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
        return directory

    def _make_keys(self, staging: _Staging, out: Path) -> None:
        """Host key by the guest's own dropbearkey (run on the host through the staged loader);
        client key by paramiko. Neither is ever generated inside the guest."""
        host_key = out / "dropbear_ed25519_host_key"
        public = staging.run("/usr/bin/dropbearkey", "-t", "ed25519", "-f", str(host_key))
        line = next((ln for ln in public.splitlines() if ln.startswith("ssh-ed25519 ")), None)
        if line is None:
            raise ImageBuildError(f"dropbearkey printed no public key:\n{public}")
        (out / "host_key.pub").write_text(" ".join(line.split()[:2]) + "\n")
        import paramiko

        client = paramiko.ECDSAKey.generate(bits=256)
        client.write_private_key_file(str(out / "client_key"))
        (out / "client_key.pub").write_text(f"{client.get_name()} {client.get_base64()} hil\n")

    def _write_userland(self, staging: _Staging, keys: Path, out: BinaryIO) -> None:
        log.info("writing the userland initramfs segment")
        archive = _Archive(out)
        for top in _MERGED_TOPS:
            archive.symlink(top, f"usr/{top}")
        for directory in (
            "proc",
            "sys",
            "dev",
            "tmp",
            "run",
            "root/.ssh",
            "etc/dropbear",
            "var/log",
        ):
            archive.directory(directory)
        files = staging.closure(self.recipe.binaries)
        for guest_path, source in sorted(files.items()):
            archive.file(guest_path, source, 0o755)
        for alias, target in staging.aliases.items():
            archive.symlink(alias, target)
        self._python(staging, archive)
        self._busybox_applets(staging, archive)
        archive.symlink("init", "usr/bin/busybox")
        for name in ("inittab", "profile"):
            archive.file(f"etc/{name}", INIT_DIR / name, 0o644)
        archive.file("etc/hil/rc.sysinit", INIT_DIR / "rc.sysinit", 0o755)
        archive.data("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        archive.data("etc/group", b"root:x:0:\n", 0o644)
        archive.data("etc/shells", b"/bin/sh\n", 0o644)
        archive.file(
            "etc/dropbear/dropbear_ed25519_host_key", keys / "dropbear_ed25519_host_key", 0o600
        )
        archive.file("root/.ssh/authorized_keys", keys / "client_key.pub", 0o600)
        archive.close()

    def _python(self, staging: _Staging, archive: _Archive) -> None:
        minimal_root, version = staging.python_stdlib()
        stdlib = f"usr/lib/{version}"
        for source in sorted((minimal_root / stdlib).rglob("*")):
            if source.is_file() and "__pycache__" not in source.parts:
                archive.file(str(source.relative_to(minimal_root)), source, 0o644)
        for name in self.recipe.python_modules:
            module = staging.find_python_module(stdlib, name)
            for source in sorted(module.rglob("*.py")) if module.is_dir() else [module]:
                archive.file(f"{stdlib}/{source.relative_to(module.parent)}", source, 0o644)

    def _busybox_applets(self, staging: _Staging, archive: _Archive) -> None:
        listing = staging.run("/bin/busybox", "--list-full")
        for applet in listing.split():
            if applet.startswith(("usr/", "bin/", "sbin/")):
                path = applet if applet.startswith("usr/") else f"usr/{applet}"
                if path != "usr/bin/busybox" and not archive.has(path):
                    archive.symlink(path, "/usr/bin/busybox")

    # -- kernel modules and agent -------------------------------------------------------

    def _modules_segment(self, kernel: PreparedKernel) -> Path | None:
        """The modules cpio, or None for a kernel given without modules (drivers built in)."""
        if kernel.modules_root is None:
            log.info(
                "kernel %s comes without modules: no modules segment, the guest relies on "
                "built-in %s",
                kernel.version,
                ", ".join(self.recipe.modules),
            )
            return None
        order = module_load_order(kernel, list(self.recipe.modules))
        key = _digest(BUILDER_VERSION, kernel.version, _file_identity(kernel.vmlinuz), repr(order))
        path = self.cache / "modules" / f"{kernel.version}-{key}.cpio.gz"
        if path.exists() and not self.force:
            return path
        log.info(
            "copying %d kernel modules of %s: %s",
            len(order),
            kernel.version,
            ", ".join(uncompressed_name(p) for p in order),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("wb") as out:
            archive = _Archive(out)
            names = []
            for relative in order:
                assert kernel.modules_root is not None
                name = uncompressed_name(relative)
                archive.data(
                    f"lib/modules/hil/{name}", read_module(kernel.modules_root / relative), 0o644
                )
                names.append(name)
            archive.data("etc/hil/modules.order", "".join(f"{n}\n" for n in names).encode(), 0o644)
            archive.close()
        partial.rename(path)
        return path

    def _agent_segment(self) -> Path:
        key = _tree_digest(AGENT_DIR)
        path = self.cache / "agent" / f"agent-{key}.cpio.gz"
        if path.exists() and not self.force:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("wb") as out:
            archive = _Archive(out)
            for source in sorted(AGENT_DIR.glob("*.py")) if AGENT_DIR.is_dir() else []:
                archive.file(f"usr/lib/hil/{source.name}", source, 0o755)
            archive.close()
        partial.rename(path)
        return path

    def _assemble(
        self,
        directory: Path,
        kernel: PreparedKernel,
        userland: Path,
        modules: Path | None,
        agent: Path,
        packages: list[Package],
    ) -> GuestImage:
        partial = directory.with_name(directory.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        shutil.copyfile(kernel.vmlinuz, partial / "vmlinuz")
        with (partial / "initramfs.img").open("wb") as out:
            for segment in (userland / "userland.cpio.gz", modules, agent):
                if segment is not None:
                    out.write(segment.read_bytes())
        shutil.copyfile(userland / "client_key", partial / "client_key")
        os.chmod(partial / "client_key", 0o600)
        if directory.exists():
            shutil.rmtree(directory)
        partial.rename(directory)
        image = GuestImage(
            directory=directory,
            recipe=self.recipe.name,
            kernel=directory / "vmlinuz",
            initramfs=directory / "initramfs.img",
            kernel_version=kernel.version,
            kernel_origin=kernel.origin,
            cmdline=self.recipe.kernel_cmdline,
            client_key=directory / "client_key",
            host_public_key=(userland / "host_key.pub").read_text().strip(),
            packages=tuple(f"{p.name}={p.version}" for p in packages),
        )
        image.save()
        return image


class _Staging:
    """Downloaded packages unpacked side by side, looked up as one merged-/usr filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.package_roots: list[Path] = []
        self.aliases: dict[str, str] = {}

    def add_package(self, deb: Path) -> None:
        target = self.root / deb.name.split("_")[0]
        extract_deb(deb, target)
        self.package_roots.append(target)

    def locate(self, path: str, hops: int = 0) -> Path:
        """The real file behind a guest path, following symlinks across packages."""
        if hops > 20:
            raise ImageBuildError(f"symlink loop while resolving {path}")
        for candidate in _merged_alternatives(path):
            for root in self.package_roots:
                found = root / candidate
                if found.is_symlink():
                    target = os.readlink(found)
                    resolved = (
                        target
                        if target.startswith("/")
                        else os.path.normpath(
                            os.path.join(os.path.dirname("/" + candidate), target)
                        )
                    )
                    return self.locate(resolved, hops + 1)
                if found.is_file():
                    return found
        raise ImageBuildError(
            f"{path} is in none of the downloaded packages; add the package that ships it to "
            "the recipe's `packages`"
        )

    def closure(self, binaries: tuple[str, ...]) -> dict[str, Path]:
        """Binaries plus every shared library (and loader) they need, keyed by guest path."""
        files: dict[str, Path] = {}
        pending = [(_guest_path(b), self.locate(b)) for b in binaries]
        for binary, real in pending:
            real_guest = _guest_path(self._relative(real))
            if real_guest != binary:
                self.aliases[binary] = "/" + real_guest
            binary = real_guest
            if binary in files:
                continue
            files[binary] = real
            deps = elf.read_deps(real)
            if deps.interpreter and _guest_path(deps.interpreter) not in files:
                pending.append((_guest_path(deps.interpreter), self.locate(deps.interpreter)))
            for soname in deps.needed:
                guest = f"usr/lib/x86_64-linux-gnu/{soname}"
                if guest not in files:
                    pending.append((guest, self._find_library(soname)))
        return files

    def _relative(self, real: Path) -> str:
        root = next(r for r in self.package_roots if real.is_relative_to(r))
        return str(real.relative_to(root))

    def _find_library(self, soname: str) -> Path:
        for directory in _LIB_DIRS:
            try:
                return self.locate(f"/{directory}/{soname}")
            except ImageBuildError:
                continue
        raise ImageBuildError(
            f"shared library {soname} is in none of the downloaded packages (searched "
            f"{', '.join(_LIB_DIRS)}); is a package missing from the recipe?"
        )

    def python_stdlib(self) -> tuple[Path, str]:
        for root in self.package_roots:
            for landmark in sorted(root.glob("usr/lib/python3.*/os.py")):
                return root, landmark.parent.name
        raise ImageBuildError("no python stdlib (usr/lib/python3.X/os.py) in the packages")

    def find_python_module(self, stdlib: str, name: str) -> Path:
        for root in self.package_roots:
            for candidate in (root / stdlib / name, root / stdlib / f"{name}.py"):
                if candidate.exists():
                    return candidate
        raise ImageBuildError(f"python module {name!r} is in none of the downloaded packages")

    def run(self, binary: str, *args: str) -> str:
        """Run a staged binary on the host through the staged loader and libraries."""
        real = self.locate(binary)
        deps = elf.read_deps(real)
        argv = [str(real), *args]
        if deps.interpreter:
            lib_dirs = sorted({str(self._find_library(n).parent) for n in deps.needed})
            argv = [str(self.locate(deps.interpreter)), "--library-path", ":".join(lib_dirs), *argv]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageBuildError(f"{binary} {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout + result.stderr


class _Archive:
    """CpioWriter that creates parent directories once and remembers what it holds."""

    def __init__(self, out: BinaryIO) -> None:
        self._writer = CpioWriter(out)
        self._paths: set[str] = set()

    def has(self, path: str) -> bool:
        return path.strip("/") in self._paths

    def directory(self, path: str) -> None:
        for parent in [*parents(path), path.strip("/")]:
            if parent not in self._paths:
                self._paths.add(parent)
                self._writer.add(Entry(parent, S_IFDIR | 0o755))

    def file(self, path: str, source: Path, mode: int) -> None:
        self._add(Entry(path.strip("/"), S_IFREG | mode, data=source))

    def data(self, path: str, data: bytes, mode: int) -> None:
        self._add(Entry(path.strip("/"), S_IFREG | mode, data=data))

    def symlink(self, path: str, target: str) -> None:
        self._add(Entry(path.strip("/"), S_IFLNK | 0o777, link_target=target))

    def _add(self, entry: Entry) -> None:
        if entry.path in self._paths:
            return
        for parent in parents(entry.path):
            self.directory(parent)
        self._paths.add(entry.path)
        self._writer.add(entry)

    def close(self) -> None:
        self._writer.close()


def _guest_path(path: str) -> str:
    """Guest paths live under merged /usr: /bin/x -> usr/bin/x."""
    stripped = path.strip("/")
    top = stripped.split("/", 1)[0]
    return f"usr/{stripped}" if top in _MERGED_TOPS else stripped


def _merged_alternatives(path: str) -> list[str]:
    stripped = path.strip("/")
    if stripped.startswith("usr/"):
        return [stripped, stripped.removeprefix("usr/")]
    return [stripped, f"usr/{stripped}"]


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def _tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")) if directory.is_dir() else []:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
