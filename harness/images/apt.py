"""Package resolution and download through the machine's own apt, never installing anything.

Resolution asks apt to simulate an install against an empty dpkg status, which yields the full
dependency closure with exact versions; that answer is cached by the state of the apt lists so a
second build does not pay the ~4 s simulation again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path

from harness.images.errors import ImageBuildError

log = logging.getLogger("hil.images")

_INST = re.compile(r"^Inst (\S+) \((\S+) ")
#: apt's machine-readable progress (APT::Status-Fd): "dlstatus:<item>:<percent>:<text>".
_DLSTATUS = re.compile(r"^dlstatus:\d+:([\d.]+):")
_KERNEL_PACKAGE = re.compile(r"^linux-image-\d")
_SUITE = re.compile(r"[a-z][a-z0-9-]*")
SYSTEM_LISTS = Path("/var/lib/apt/lists")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
#: A private suite's package lists are refreshed when older than this (seconds): often enough
#: to follow point releases, rarely enough that a day of test runs does not hit the mirror.
SUITE_MAX_AGE = 24 * 3600


@dataclass(frozen=True, order=True)
class Package:
    name: str
    version: str

    def deb_in(self, directory: Path) -> Path | None:
        """The downloaded file, whatever its architecture suffix (amd64 or all)."""
        stem = f"{self.name}_{self.version.replace(':', '%3a')}_"
        return next(iter(sorted(directory.glob(f"{glob_escape(stem)}*.deb"))), None)


def require_tool(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ImageBuildError(
            f"the image builder needs `{tool}`, which is not installed; "
            f"install it with: apt-get install {package} (or run: sh .ci/bootstrap)"
        )
    return found


def apt_lists_fingerprint(extra_args: tuple[str, ...] = (), lists: Path = SYSTEM_LISTS) -> str:
    """Changes whenever `apt-get update` brings new package lists (new versions may be there)."""
    digest = hashlib.sha256(repr(extra_args).encode())
    for path in sorted(lists.glob("*Packages*")) if lists.is_dir() else []:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class Apt:
    """Resolves and downloads packages, caching both under `cache_dir`."""

    def __init__(
        self,
        cache_dir: Path,
        apt_options: tuple[str, ...] = (),
        lists: Path = SYSTEM_LISTS,
        sources: str = "the configured Debian sources",
    ) -> None:
        self.cache_dir = cache_dir
        self.debs = cache_dir / "debs"
        self.options = apt_options
        self.lists = lists
        self.sources = sources
        self.debs.mkdir(parents=True, exist_ok=True)

    def closure(self, names: Iterable[str]) -> list[Package]:
        """Every package (with version) that installing `names` on an empty system would bring."""
        wanted = sorted(set(names))
        key = hashlib.sha256(
            (apt_lists_fingerprint(self.options, self.lists) + " ".join(wanted)).encode()
        ).hexdigest()[:16]
        memo = self.cache_dir / "resolved" / f"{key}.json"
        if memo.exists():
            return [Package(*item) for item in json.loads(memo.read_text())]
        log.info("resolving %s with apt", ", ".join(wanted))
        packages = self._simulate(wanted)
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps([[p.name, p.version] for p in packages]))
        return packages

    def kernel_package(self, name: str) -> Package:
        """Follow a kernel metapackage (linux-image-cloud-amd64) to the image it depends on."""
        candidates = [p for p in self.closure([name]) if _KERNEL_PACKAGE.match(p.name)]
        if not candidates:
            raise ImageBuildError(
                f"kernel package {name!r} brings no linux-image-<version> package; "
                "name a Debian kernel image package such as linux-image-cloud-amd64"
            )
        return candidates[0]

    def download(self, packages: Iterable[Package]) -> list[Path]:
        packages = sorted(set(packages))
        missing = [p for p in packages if p.deb_in(self.debs) is None]
        if missing:
            log.info(
                "downloading %d of %d packages from %s", len(missing), len(packages), self.sources
            )
            self._download([f"{p.name}={p.version}" for p in missing])
        found = {p: p.deb_in(self.debs) for p in packages}
        absent = [f"{p.name}={p.version}" for p, path in found.items() if path is None]
        if absent:
            raise ImageBuildError(f"apt-get download did not produce: {', '.join(absent)}")
        return [path for path in found.values() if path is not None]

    def _simulate(self, names: list[str]) -> list[Package]:
        output = self._run(
            [
                "apt-get",
                *self._option_args(),
                "-s",
                "-o",
                "Dir::State::status=/dev/null",
                "-o",
                "APT::Install-Recommends=false",
                "install",
                *names,
            ]
        )
        packages = [Package(m[1], m[2]) for m in map(_INST.match, output.splitlines()) if m]
        if not packages:
            raise ImageBuildError(f"apt resolved nothing for {names}:\n{output[-2000:]}")
        return packages

    def _option_args(self) -> list[str]:
        return [arg for option in self.options for arg in ("-o", option)]

    def _run(self, argv: list[str]) -> str:
        require_tool("apt-get", "apt")
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise self._failure(argv, result.returncode, result.stderr)
        return result.stdout

    def _download(self, specs: list[str]) -> None:
        """`apt-get download` into the deb cache, logging each package as apt fetches it and
        every 10 % of the bytes: a kernel package is tens of MB, and a silent minute looks
        like a hang."""
        require_tool("apt-get", "apt")
        argv = ["apt-get", *self._option_args(), "-o", "APT::Status-Fd=1", "download", *specs]
        output: list[str] = []
        with subprocess.Popen(
            argv, cwd=self.debs, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            assert process.stdout is not None
            reported = 0
            for line in process.stdout:
                output.append(line)
                reported = _report_download(line.rstrip("\n"), len(specs), reported)
        if process.returncode != 0:
            raise self._failure(argv, process.returncode, "".join(output))

    def _failure(self, argv: list[str], code: int, output: str) -> ImageBuildError:
        unknown = re.findall(r"Unable to locate package (\S+)", output)
        if unknown:
            return ImageBuildError(
                f"package(s) not found in {self.sources}: {', '.join(unknown)}"
                "; check the name (apt-cache search) or run apt-get update"
            )
        return ImageBuildError(
            f"{' '.join(argv[:3])} ... failed (exit {code}):\n{output.strip()[-2000:]}"
        )


def _report_download(line: str, total: int, reported: int) -> int:
    """Log one line of `apt-get download` worth showing; returns the last percent logged."""
    status = _DLSTATUS.match(line)
    if status:
        percent = int(float(status[1])) // 10 * 10
        if percent > reported:
            log.info("download %d %% done", percent)
            return percent
    elif line.startswith("Get:"):
        number, _, rest = line.removeprefix("Get:").partition(" ")
        log.info("downloading [%s/%d] %s", number, total, rest.split(" ", 1)[-1])
    elif line.startswith("Fetched "):
        log.info("%s", line)
    return reported


def suite_apt(suite: str, cache_dir: Path, mirror: str = DEBIAN_MIRROR) -> Apt:
    """An Apt that sees only Debian `suite`, through a private state directory.

    Why private: testing another release's kernel must never add sources to the machine (or
    need root for it); the state lives under the image cache and is refreshed daily.
    """
    if not _SUITE.fullmatch(suite):
        raise ImageBuildError(f"{suite!r} is not a Debian suite name (e.g. trixie, bookworm)")
    root = cache_dir / "apt-suites" / suite
    options = suite_apt_options(root)
    _write_sources(root, suite, mirror)
    stamp = root / "updated"
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > SUITE_MAX_AGE:
        log.info("apt-get update for Debian %s (private state in %s)", suite, root)
        apt = Apt(cache_dir, options, root / "state" / "lists", f"Debian {suite} ({mirror})")
        apt._run(["apt-get", *apt._option_args(), "update"])
        stamp.touch()
    return Apt(cache_dir, options, root / "state" / "lists", f"Debian {suite} ({mirror})")


def suite_apt_options(root: Path) -> tuple[str, ...]:
    """apt options pointing every piece of state and configuration at `root`."""
    return (
        f"Dir::Etc::SourceList={root / 'sources.list'}",
        f"Dir::Etc::SourceParts={root / 'sources.list.d'}",
        "Dir::Etc::Preferences=/dev/null",
        f"Dir::Etc::PreferencesParts={root / 'preferences.d'}",
        f"Dir::State={root / 'state'}",
        f"Dir::State::Lists={root / 'state' / 'lists'}",
        "Dir::State::status=/dev/null",
        f"Dir::Cache={root / 'cache'}",
        "Acquire::Languages=none",
    )


def suite_sources(suite: str, mirror: str = DEBIAN_MIRROR) -> str:
    """sources.list text: the suite (and its base release for -backports, whose kernels
    depend on packages of the base release)."""
    signed = f"[signed-by={DEBIAN_KEYRING}]"
    suites = [suite.removesuffix("-backports"), suite] if suite.endswith("-backports") else [suite]
    return "".join(f"deb {signed} {mirror} {name} main\n" for name in suites)


def _write_sources(root: Path, suite: str, mirror: str) -> None:
    if not DEBIAN_KEYRING.exists():
        raise ImageBuildError(
            f"{DEBIAN_KEYRING} is missing; install it with: apt-get install debian-archive-keyring"
        )
    for directory in ("sources.list.d", "preferences.d", "state/lists/partial", "cache"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    sources = root / "sources.list"
    text = suite_sources(suite, mirror)
    if not sources.exists() or sources.read_text() != text:
        sources.write_text(text)
        (root / "updated").unlink(missing_ok=True)


def extract_deb(deb: Path, destination: Path) -> None:
    require_tool("dpkg-deb", "dpkg")
    destination.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["dpkg-deb", "-x", str(deb), str(destination)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ImageBuildError(f"{deb} is not a usable .deb: {result.stderr.strip()}")
