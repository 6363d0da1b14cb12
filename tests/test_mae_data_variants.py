"""benchmarks/mae_data_variants.py: the symmetry classes hold the symmetry they name, and the script runs."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import mae_data_variants as variants

CHECKS = {
    "mirror_lr": lambda x: np.array_equal(x, x[:, ::-1]),
    "mirror_tb": lambda x: np.array_equal(x, x[::-1]),
    "rot180": lambda x: np.array_equal(x, x[::-1, ::-1]),
    "rot90": lambda x: np.array_equal(x, np.rot90(x)) or np.array_equal(x, np.rot90(x, -1)),
    "diagonal": lambda x: np.array_equal(x, x.transpose(1, 0, 2)) or np.array_equal(x, x[::-1, ::-1].transpose(1, 0, 2)),
}
CHECKS["mirror_both"] = lambda x: CHECKS["mirror_lr"](x) and CHECKS["mirror_tb"](x)
CHECKS["square"] = lambda x: CHECKS["mirror_both"](x) and CHECKS["diagonal"](x) and CHECKS["rot90"](x)


@pytest.mark.parametrize("index", range(8))
def test_each_symmetry_class_has_its_symmetry_and_no_other(index):
    name = variants.SYMMETRIES[index]
    for item in range(3):
        image = np.asarray(variants.symmetry_image(index, np.random.default_rng([7, index, item]), 64))
        held = {other for other, check in CHECKS.items() if check(image)}
        expected = {"none": set(), "mirror_both": {"mirror_lr", "mirror_tb", "rot180", "mirror_both"},
                    "rot90": {"rot90", "rot180"}, "square": set(CHECKS)}.get(name, {name})
        assert held == expected, (name, held)


def test_the_script_pretrains_scores_and_fine_tunes_both_starts():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mae_data_variants.py"), "--data", "symmetry", "--steps", "1",
         "--finetune-steps", "1", "--train-per-class", "2", "--val-per-class", "1"],
        capture_output=True, text=True, timeout=300, check=False, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "random trunk: kNN" in result.stdout
    assert "finetune pretrained" in result.stdout and "finetune random init" in result.stdout


def test_layouts_are_mirror_symmetric_and_distinct():
    assert len(variants.LAYOUTS) == 8
    halves = [set(layout) for layout in variants.LAYOUTS]
    assert all(len(a & b) <= 1 for i, a in enumerate(halves) for b in halves[i + 1 :])
    assert all(col in (0, 1) for layout in variants.LAYOUTS for _, col in layout)


@pytest.mark.parametrize("data", ["textures", "layouts"])
def test_new_variants_render_every_class(data):
    images, labels = variants.make_split(data, "val", 1, 64)
    assert images.shape == (8, 3, 64, 64) and labels.tolist() == list(range(8))
    assert len({image.numpy().tobytes() for image in images}) == 8
