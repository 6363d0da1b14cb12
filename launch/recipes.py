"""Finding the YAML recipes shipped in ``unveil.recipes``, by name or by path."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path


class RecipeNotFoundError(FileNotFoundError):
    """A ``--config`` value that is neither a file nor the name of a shipped recipe."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"recipe {name!r} not found (not a file, not a shipped recipe; see 'unveil recipes')")


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    description: str


def recipes_dir() -> Path:
    """The folder of shipped recipes: the ``unveil.recipes`` package data."""
    try:
        files = importlib.resources.files("unveil.recipes")
    except ModuleNotFoundError:
        # Editable installs by setuptools do not expose a namespace sub-package of a regular package;
        # the recipes then sit next to this package, as in the source tree (and in a wheel).
        return Path(__file__).resolve().parent.parent / "recipes"
    if isinstance(files, Path):
        return files
    # a namespace package gives a MultiplexedPath over its folders: take the first that exists
    for folder in getattr(files, "_paths", []):
        if Path(folder).is_dir():
            return Path(folder)
    return Path(str(files))


def _description(path: Path) -> str:
    """The first comment line of a recipe, without the ``#``."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            stripped = line.strip()
            if stripped.startswith("#"):
                return stripped.lstrip("#").strip()
            if stripped:
                break
    return ""


PRESETS = "presets"
"""Sub-folder of the recipes with partial configs (strategy, precision) meant to be stacked after a recipe."""


def shipped_recipes() -> list[Recipe]:
    """Every shipped recipe, sorted by name (presets not included: see ``shipped_presets``)."""
    folder = recipes_dir()
    if not folder.is_dir():
        return []
    return [Recipe(p.stem, p, _description(p)) for p in sorted(folder.glob("*.yaml"))]


def shipped_presets() -> list[Recipe]:
    """Every shipped preset (``presets/<name>``), sorted by name: partial configs to stack after a recipe,
    e.g. ``--config mae_hiera_l_in1k --config presets/fsdp --config presets/bf16``."""
    folder = recipes_dir() / PRESETS
    if not folder.is_dir():
        return []
    return [Recipe(f"{PRESETS}/{p.stem}", p, _description(p)) for p in sorted(folder.glob("*.yaml"))]


def resolve_recipe(value: str) -> Path:
    """A path to a recipe file: ``value`` itself if it is a file, else the shipped recipe or preset of that
    name (``mae_hiera_b_in1k``, ``presets/fsdp``; with or without ``.yaml``). Raises ``RecipeNotFoundError``
    otherwise."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    name = value.removesuffix(".yaml")
    folder, _, stem = name.rpartition("/")
    if stem and "\\" not in name and folder in ("", PRESETS):
        shipped = recipes_dir() / folder / f"{stem}.yaml"
        if shipped.is_file():
            return shipped
    raise RecipeNotFoundError(value)
