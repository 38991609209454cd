"""Image recipes: YAML files describing what goes into a guest.

A recipe is named on the command line (`--hil-image`, `python -m harness.images build RECIPE`)
either by path or by name. Resolution order: an existing file at that path (relative to the
current directory) is the user's own recipe; anything else is a name among the recipes shipped
with the harness (`RECIPES_DIR`). A user project keeps its recipes wherever it likes and passes
their paths.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from harness.images.errors import ImageBuildError

#: The shipped recipes. In the repository this is a symlink to the top-level `images/`; the
#: wheel and sdist carry the files themselves (pyproject.toml's package-data), so the same path
#: works from a checkout and from an installed package.
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "default"


@dataclass(frozen=True)
class Recipe:
    name: str
    kernel: str
    modules: tuple[str, ...]
    packages: tuple[str, ...]
    binaries: tuple[str, ...]
    python_modules: tuple[str, ...]
    kernel_cmdline: str
    source_text: str
    path: Path
    description: str = ""


_LIST_FIELDS = ("modules", "packages", "binaries", "python_modules")
_REQUIRED = ("name", "kernel", "modules", "packages", "binaries", "kernel_cmdline")


def find_recipe(name_or_path: str | None) -> Path:
    """The user's recipe file at `name_or_path`, else the shipped recipe of that name."""
    if name_or_path is None:
        name_or_path = DEFAULT_RECIPE
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    by_name = RECIPES_DIR / f"{name_or_path}.yaml"
    if by_name.is_file():
        return by_name
    if _looks_like_path(name_or_path):
        raise ImageBuildError(
            f"image recipe file {candidate} does not exist (relative paths are taken from "
            f"{Path.cwd()}); give an existing recipe YAML or a shipped recipe name "
            f"({_shipped_names()})"
        )
    raise ImageBuildError(
        f"image recipe {name_or_path!r} not found: not a file, and not one of the recipes "
        f"shipped in {RECIPES_DIR} ({_shipped_names()}); give a shipped name or the path of "
        "your own recipe YAML"
    )


def _looks_like_path(text: str) -> bool:
    return "/" in text or text.endswith((".yaml", ".yml"))


def _shipped_names() -> str:
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    return "shipped: " + (", ".join(names) if names else "none, the installation is incomplete")


def load_recipe(path: Path) -> Recipe:
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ImageBuildError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ImageBuildError(f"{path}: a recipe is a mapping of keys ({', '.join(_REQUIRED)})")
    known = {f.name for f in fields(Recipe)} - {"source_text", "path"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ImageBuildError(f"{path}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ImageBuildError(f"{path}: missing required key(s) {missing}")
    for key in _LIST_FIELDS:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ImageBuildError(f"{path}: `{key}` must be a list of strings, got {value!r}")
        data[key] = tuple(value)
    for key in ("name", "kernel", "kernel_cmdline", "description"):
        if key in data and not isinstance(data[key], str):
            raise ImageBuildError(f"{path}: `{key}` must be a string, got {data[key]!r}")
    data.setdefault("python_modules", ())
    return Recipe(source_text=text, path=path, **data)
