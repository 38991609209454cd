"""pytest plugin entry point (registered under pytest11 as ``hil``)."""

from __future__ import annotations
