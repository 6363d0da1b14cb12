"""The built wheel installs one namespace, ``unveil``, with its recipes."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_only_the_unveil_namespace(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("unveil-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"unveil"}, top
    for sub in ("models", "datasets", "pretrain", "finetune", "common", "launch"):
        assert f"unveil/{sub}/__init__.py" in names
    recipes = [n for n in names if n.startswith("unveil/recipes/") and n.endswith(".yaml")]
    assert "unveil/recipes/quickstart.yaml" in recipes
    assert not any(n.startswith(("unveil/tests/", "unveil/benchmarks/")) for n in names)


def test_installed_recipes_are_found_by_name():
    from importlib.resources import files

    assert files("unveil.recipes").joinpath("quickstart.yaml").is_file()
