"""--hil-kernel is judged once, at start: one usage error naming what was wrong and what to
give, before any item runs, in model mode too (pytester)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.images.errors import ImageBuildError
from harness.images.kernel import KERNEL_SPEC_FORMS, parse_kernel_spec
from tests.unit.images.conftest import fake_bzimage


def _usage_error(result: pytest.RunResult, *expected: str) -> None:
    """Exactly one error line, no traceback, no test run, the accepted forms named."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert err.count("ERROR: --hil-kernel=") == 1, err
    for text in expected:
        assert text in err, err
    assert f"--hil-kernel takes {KERNEL_SPEC_FORMS}" in err
    assert "Traceback" not in err + result.stdout.str()
    assert "passed" not in result.stdout.str() and "failed" not in result.stdout.str()


@pytest.mark.parametrize("backend", ["model", "qemu"])
def test_a_missing_kernel_file_is_one_usage_error(pytester, two_scenarios, backend):
    result = pytester.runpytest(f"--hil-backend={backend}", "--hil-kernel=/nonexistent")
    _usage_error(result, "--hil-kernel=/nonexistent: kernel image /nonexistent does not exist")


@pytest.mark.parametrize(
    ("spec", "content", "expected"),
    [
        (
            "{tmp}/passwd",
            "root:x:0:0:root:/root:/bin/bash\n",
            "{spec} is not an x86 Linux kernel image",
        ),
        ("/etc/passwd", None, "/etc/passwd is not an x86 Linux kernel image"),
        ("{tmp}/linux-image-fake.deb", "not an archive\n", "{spec} is not a Debian package"),
        (
            "Linux Image",
            None,
            "'Linux Image' is neither an existing file nor a Debian package name",
        ),
    ],
    ids=["a-text-file", "etc-passwd", "a-deb-that-is-no-debian-package", "no-package-name"],
)
def test_what_is_no_kernel_is_refused_in_model_mode(
    pytester: pytest.Pytester, two_scenarios: None, spec: str, content: str | None, expected: str
) -> None:
    """``content``: the file written at ``spec`` first ({tmp}: the pytester project)."""
    spec = spec.format(tmp=pytester.path)
    if content is not None:
        Path(spec).write_text(content)
    result = pytester.runpytest("--hil-backend=model", f"--hil-kernel={spec}")
    _usage_error(result, expected.format(spec=spec))


def test_every_wrong_kernel_of_several_is_checked(pytester, two_scenarios):
    good = fake_bzimage(pytester.path / "vmlinuz-good", "6.1.0-good")
    result = pytester.runpytest(
        "--hil-backend=model", f"--hil-kernel={good}", "--hil-kernel=/nonexistent"
    )
    _usage_error(result, "/nonexistent does not exist")


def test_a_bzimage_passes_and_the_run_goes_on(pytester, two_scenarios):
    good = fake_bzimage(pytester.path / "vmlinuz-good", "6.1.0-good")
    result = pytester.runpytest("--hil-backend=model", f"--hil-kernel={good}")
    result.assert_outcomes(passed=2)


def test_the_builder_refuses_the_same_files(tmp_path):
    """One check, shared: the image builder parses specs with the same function."""
    text = tmp_path / "vmlinuz"
    text.write_text("#!/bin/sh\n")
    with pytest.raises(ImageBuildError, match="not an x86 Linux kernel image"):
        parse_kernel_spec(str(text))
    deb = tmp_path / "k.deb"
    deb.write_bytes(b"!<arch>\nnot-debian-binary")
    with pytest.raises(ImageBuildError, match="not a Debian package"):
        parse_kernel_spec(str(deb))
    real_shape = tmp_path / "real.deb"
    real_shape.write_bytes(b"!<arch>\ndebian-binary   1700000000  0     0     100644  4 `\n2.0\n")
    assert parse_kernel_spec(str(real_shape)).deb == real_shape
