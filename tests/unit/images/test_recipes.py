"""Recipe lookup: a user's file by path first, then the recipes shipped with the harness."""

from __future__ import annotations

import pytest

from harness.images.errors import ImageBuildError
from harness.images.recipe import DEFAULT_RECIPE, RECIPES_DIR, find_recipe, load_recipe


def test_the_default_recipe_is_shipped_inside_the_package():
    path = find_recipe(None)
    assert path == RECIPES_DIR / "default.yaml"
    assert RECIPES_DIR.parent.name == "images" and RECIPES_DIR.parent.parent.name == "harness"
    assert load_recipe(path).name == DEFAULT_RECIPE


def test_a_user_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_text((RECIPES_DIR / "default.yaml").read_text())
    assert find_recipe("default") == tmp_path / "default"


def test_a_user_recipe_by_relative_path(tmp_path, monkeypatch):
    (tmp_path / "images").mkdir()
    mine = tmp_path / "images" / "mine.yaml"
    shipped = (RECIPES_DIR / "default.yaml").read_text()
    mine.write_text(shipped.replace("name: default", "name: mine"))
    monkeypatch.chdir(tmp_path)
    assert load_recipe(find_recipe("images/mine.yaml")).name == "mine"


def test_a_missing_recipe_file_names_the_directory_it_was_looked_up_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageBuildError, match=r"file images/nope\.yaml does not exist") as info:
        find_recipe("images/nope.yaml")
    assert str(tmp_path) in str(info.value) and "shipped: default" in str(info.value)


def test_an_unknown_name_lists_the_shipped_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageBuildError, match=r"'nope' not found.*shipped: default"):
        find_recipe("nope")
