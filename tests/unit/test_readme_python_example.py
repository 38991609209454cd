"""The README's Python example is tests/integration/test_readme_example.py, character for
character: the file runs in CI, so the README cannot show an example that does not work."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "tests/integration/test_readme_example.py"


def test_readme_python_example_is_the_test_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pattern = rf"<!-- {re.escape(EXAMPLE)}, verbatim[^>]*-->\n```python\n(.*?)```\n"
    blocks = re.findall(pattern, readme, flags=re.DOTALL)
    assert len(blocks) == 1, f"README must show {EXAMPLE} once, after its marker comment"
    assert blocks[0] == (ROOT / EXAMPLE).read_text(encoding="utf-8"), (
        f"README's Python example differs from {EXAMPLE}: copy the file into the README block"
    )
