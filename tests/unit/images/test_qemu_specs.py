"""QEMU specs: the forms --hil-qemu takes, and how an unpacked Debian QEMU is run.

The unpacked-tree tests build a directory of the shape a Debian qemu-system-x86 closure
unpacks to (pure path logic); running a real unpacked QEMU is tests/integration/test_qemu_specs.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.images.errors import ImageBuildError
from harness.images.qemu_pkg import QemuSpec, parse_qemu_spec, prepare_qemu, unpacked_command
from harness.plugin.variants import axes, qemu_id, variants


def test_a_debian_spec_names_suite_and_package():
    spec = parse_qemu_spec("debian:trixie/qemu-system-x86")
    assert (spec.suite, spec.package, spec.binary) == ("trixie", "qemu-system-x86", None)
    assert spec.describe() == "package qemu-system-x86 from Debian trixie"


@pytest.mark.parametrize("text", ["debian:trixie", "debian:/qemu-system-x86", "debian:Trixie/q"])
def test_malformed_debian_specs_say_how_to_write_them(text):
    with pytest.raises(ImageBuildError, match="debian:SUITE/PACKAGE"):
        parse_qemu_spec(text)


def test_a_bare_name_is_looked_up_on_path_when_used(tmp_path):
    spec = parse_qemu_spec("no-such-qemu-binary")
    assert spec == QemuSpec("no-such-qemu-binary", binary="no-such-qemu-binary")
    with pytest.raises(ImageBuildError, match="not found: install it"):
        prepare_qemu(spec, tmp_path)


def test_a_path_must_be_an_executable_file(tmp_path):
    missing = tmp_path / "bin" / "qemu"
    with pytest.raises(ImageBuildError, match="does not exist or is not executable"):
        parse_qemu_spec(str(missing))
    missing.parent.mkdir()
    missing.write_text("#!/bin/sh\n")
    with pytest.raises(ImageBuildError, match="not executable"):
        parse_qemu_spec(str(missing))
    missing.chmod(0o755)
    command = prepare_qemu(parse_qemu_spec(str(missing)), tmp_path)
    assert command.argv == (str(missing),)
    assert command.environment() is None  # the host's own QEMU runs in our environment


def _tree(root: Path) -> None:
    for path in (
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "usr/bin/qemu-system-x86_64",
        "usr/bin/qemu-system-i386",
        "usr/share/qemu/kvmvapic.bin",
        "usr/share/seabios/bios-256k.bin",
        "usr/lib/x86_64-linux-gnu/qemu/audio-oss.so",
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("")
    (root / "usr/lib64").mkdir()
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to(
        "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    )


def test_an_unpacked_tree_runs_through_its_own_loader_with_its_firmware_and_modules(tmp_path):
    _tree(tmp_path)
    command = unpacked_command("debian:trixie/qemu-system-x86", tmp_path, "origin")
    loader, flag, libraries, binary, *rest = command.argv
    assert loader == str(tmp_path / "usr/lib64/ld-linux-x86-64.so.2")
    assert flag == "--library-path"
    assert str(tmp_path / "usr/lib/x86_64-linux-gnu") in libraries.split(":")
    assert binary == str(tmp_path / "usr/bin/qemu-system-x86_64")  # not qemu-system-i386
    assert rest == [
        "-L",
        str(tmp_path / "usr/share/qemu"),
        "-L",
        str(tmp_path / "usr/share/seabios"),
    ]
    env = command.environment()
    assert env is not None
    assert env["QEMU_MODULE_DIR"] == str(tmp_path / "usr/lib/x86_64-linux-gnu/qemu")
    assert env["PATH"] == os.environ["PATH"]  # added to, not replacing, the environment


def test_a_tree_without_a_qemu_binary_is_refused(tmp_path):
    _tree(tmp_path)
    for binary in (tmp_path / "usr/bin").iterdir():
        binary.unlink()
    with pytest.raises(ImageBuildError, match="name a qemu-system-\\* package"):
        unpacked_command("debian:trixie/qemu-utils", tmp_path, "origin")


def test_variants_label_only_the_axes_that_vary():
    both = variants(["k1", "k2"], ["qemu-system-x86_64", "debian:trixie/qemu-system-x86"])
    assert [v.label for v in both] == [
        "k1-qemu-system-x86_64",
        "k1-debian:trixie/qemu-system-x86",
        "k2-qemu-system-x86_64",
        "k2-debian:trixie/qemu-system-x86",
    ]
    assert [v.label for v in variants([], ["a", "/opt/q/bin/qemu-system-x86_64"])] == [
        "a",
        "qemu-system-x86_64",
    ]
    assert [(v.kernel, v.qemu, v.label) for v in variants(["k"], [])] == [("k", None, None)]
    assert axes(["k1", "k2"], ["a", "b"]) == "kernels and QEMUs"
    assert axes([], ["a", "b"]) == "QEMUs"
    assert axes(["k"], ["a"]) is None
    assert qemu_id(None) == "qemu-system-x86_64"
