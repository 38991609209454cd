"""Errors of the image builder: each says what was wrong and what to do about it."""

from __future__ import annotations

from harness.errors import HarnessError


class ImageBuildError(HarnessError):
    """A guest image could not be built; the message names the cause and the remedy."""
