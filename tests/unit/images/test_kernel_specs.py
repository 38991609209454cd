"""Kernel specs: parsing, the release a bare bzImage names, private suites (real apt)."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from harness.images.apt import suite_apt, suite_apt_options, suite_sources
from harness.images.builder import build_image, default_cache_dir, kernel_release
from harness.images.errors import ImageBuildError
from harness.images.kernel import KernelSpec, bzimage_release, parse_kernel_spec, prepare_kernel


def test_debian_suite_spec_names_package_and_suite():
    spec = parse_kernel_spec("debian:trixie/linux-image-cloud-amd64")
    assert spec == KernelSpec(package="linux-image-cloud-amd64", suite="trixie")
    assert spec.describe() == "package linux-image-cloud-amd64 from Debian trixie"


@pytest.mark.parametrize(
    "text",
    ["debian:trixie", "debian:/linux-image-cloud-amd64", "debian:Trixie/x", "debian:trixie/A B"],
)
def test_malformed_debian_specs_say_how_to_write_them(text):
    with pytest.raises(ImageBuildError, match=r"debian:SUITE/PACKAGE|not a Debian package"):
        parse_kernel_spec(text)


def test_bare_vmlinuz_takes_its_release_from_the_setup_header(make_bzimage):
    vmlinuz = make_bzimage("6.9.0-builtin-test")
    assert bzimage_release(vmlinuz) == "6.9.0-builtin-test"
    spec = parse_kernel_spec(str(vmlinuz))
    assert spec.modules_dir is None
    kernel = prepare_kernel(spec, apt=None, cache_dir=Path("/nonexistent"))  # type: ignore[arg-type]
    assert (kernel.version, kernel.modules_root) == ("6.9.0-builtin-test", None)


def test_a_file_without_a_bzimage_header_has_no_release(tmp_path):
    other = tmp_path / "notakernel"
    other.write_bytes(b"\0" * 0x1000)
    assert bzimage_release(other) is None
    short = tmp_path / "short"
    short.write_bytes(b"x")
    assert bzimage_release(short) is None


def test_private_suite_options_keep_apt_away_from_the_system(tmp_path):
    options = suite_apt_options(tmp_path)
    paths = [o.split("=", 1)[1] for o in options if "=" in o and "/" in o.split("=", 1)[1]]
    assert all(p.startswith(str(tmp_path)) or p == "/dev/null" for p in paths)
    assert "Dir::State::status=/dev/null" in options
    assert suite_sources("trixie").endswith("debian trixie main\n")
    assert suite_sources("trixie").startswith("deb [signed-by=/usr/share/keyrings/")
    backports = suite_sources("bookworm-backports").splitlines()
    assert [line.split()[-2] for line in backports] == ["bookworm", "bookworm-backports"]


def test_not_a_suite_name_is_refused(tmp_path):
    with pytest.raises(ImageBuildError, match="not a Debian suite name"):
        suite_apt("../etc", tmp_path)


def test_trixie_kernel_resolves_through_the_private_state():
    """Real apt against deb.debian.org (state cached under the image cache, refreshed daily)."""
    apt = suite_apt("trixie", default_cache_dir())
    assert "trixie" in apt.sources
    package = apt.kernel_package("linux-image-cloud-amd64")
    assert package.name.startswith("linux-image-6.12")
    assert apt.lists.is_relative_to(default_cache_dir())
    with pytest.raises(ImageBuildError, match="not found in Debian trixie"):
        apt.closure(["no-such-package-hil"])


def test_release_of_a_suite_kernel_without_building():
    assert kernel_release("debian:trixie/linux-image-cloud-amd64").startswith("6.12.")


def test_kernel_without_modules_builds_with_no_modules_segment(make_bzimage):
    """The guest then relies on built-in drivers: no modules.order, nothing to insmod."""
    image = build_image(None, str(make_bzimage("6.9.0-builtin-test")))
    assert image.kernel_version == "6.9.0-builtin-test"
    members = _gzip_members(image.initramfs.read_bytes())
    assert len(members) == 2  # userland + agent
    # a cpio member name is NUL-terminated (rc.sysinit merely mentions the path)
    assert not any(b"etc/hil/modules.order\0" in member for member in members)
    assert any(b"usr/lib/hil/" in member for member in members)


def _gzip_members(data: bytes) -> list[bytes]:
    members = []
    while data:
        inflater = zlib.decompressobj(wbits=31)
        members.append(inflater.decompress(data))
        data = inflater.unused_data
    return members
