"""Image builds show download progress: one line per package apt fetches (real apt-get)."""

from __future__ import annotations

import logging

from harness.images.apt import Apt


def test_each_downloaded_package_is_logged(tmp_path, caplog):
    apt = Apt(tmp_path)
    (hello,) = [p for p in apt.closure(["hello"]) if p.name == "hello"]
    with caplog.at_level(logging.INFO, logger="hil.images"):
        (deb,) = apt.download([hello])
    assert deb.name.startswith("hello_")
    lines = [r.getMessage() for r in caplog.records if r.name == "hil.images"]
    assert any(line.startswith("downloading [1/1] ") and " hello " in line for line in lines)
    assert any(line.startswith("Fetched ") for line in lines)
