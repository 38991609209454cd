"""Image recipes: YAML files in images/ describing what goes into a guest."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from harness.images.errors import ImageBuildError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "images"


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
    """A recipe by path, or by name in images/ (default: images/default.yaml)."""
    if name_or_path is None:
        name_or_path = "default"
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate.resolve()
    by_name = RECIPES_DIR / f"{name_or_path}.yaml"
    if by_name.is_file():
        return by_name
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))) or "none"
    raise ImageBuildError(
        f"image recipe {name_or_path!r} not found (neither a file nor a name in {RECIPES_DIR}; "
        f"known recipes: {known})"
    )


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
