"""J&F against vos-benchmark (PyPI; its F is davis2017-evaluation's code) and against hand-checked cases."""

import math

import numpy as np
import pytest
import torch
from unveil.finetune.vos_metrics import (
    VOSScores,
    boundary_map,
    boundary_radius,
    contour_accuracy,
    region_similarity,
    sequence_scores,
)


def _label_video(frames: int, height: int, width: int, objects: int, seed: int) -> np.ndarray:
    """[T, H, W] uint8 label maps of moving overlapping rectangles and discs, every object present in frame 1."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((frames, height, width), np.uint8)
    ys, xs = np.mgrid[:height, :width]
    for obj in range(1, objects + 1):
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        vy, vx = rng.uniform(-0.08, 0.08, 2) * (height, width)
        size = rng.uniform(0.1, 0.25) * min(height, width)
        disc = obj % 2 == 0
        for t in range(frames):
            y, x = cy + vy * (t - 1), cx + vx * (t - 1)
            shape = (
                (ys - y) ** 2 + (xs - x) ** 2 <= size**2
                if disc
                else (abs(ys - y) <= size) & (abs(xs - x) <= size * 0.6)
            )
            labels[t][shape] = obj
    return labels


def _perturb(labels: np.ndarray, seed: int) -> np.ndarray:
    """A plausible prediction: shifted, with noise, one object lost in one frame, a spurious blob."""
    rng = np.random.default_rng(seed)
    pred = np.roll(labels, shift=(0, int(rng.integers(1, 4)), int(rng.integers(-3, 3))), axis=(0, 1, 2))
    noise = rng.random(labels.shape) < 0.02
    pred[noise] = rng.integers(0, labels.max() + 1, noise.sum())
    pred[2][pred[2] == 1] = 0
    pred[3, :4, :6] = labels.max()
    return pred


def _one_hot(labels: np.ndarray, objects: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(labels == obj) for obj in range(1, objects + 1)], dim=1)


@pytest.mark.parametrize(
    "height,width,objects,seed", [(64, 64, 3, 0), (48, 80, 2, 1), (200, 300, 3, 2), (90, 61, 1, 3)]
)
def test_matches_vos_benchmark(height, width, objects, seed):
    evaluator_module = pytest.importorskip("vos_benchmark.evaluator")
    truth = _label_video(7, height, width, objects, seed)
    pred = _perturb(truth, seed + 10)
    reference = evaluator_module.Evaluator()
    for t in range(1, len(truth) - 1):  # vos-benchmark's VideoEvaluator drops the first and last frames too
        reference.feed_frame(pred[t], truth[t])
    ref_j, ref_f = reference.conclude()
    j, f = sequence_scores(_one_hot(pred, objects), _one_hot(truth, objects))
    assert sorted(ref_j) == list(range(1, objects + 1))
    for obj in range(1, objects + 1):
        assert abs(j[obj - 1].item() * 100 - ref_j[obj]) <= 1e-4, (obj, j, ref_j)
        assert abs(f[obj - 1].item() * 100 - ref_f[obj]) <= 1e-4, (obj, f, ref_f)
    assert (
        0.01 < f.mean().item() < 0.99 and 0.01 < j.mean().item() < 0.99
    )  # the case is neither trivial nor hopeless


def test_boundary_map_by_hand():
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[1:3, 1:4] = True  # rows 1-2, columns 1-3
    expected = torch.zeros(5, 6, dtype=torch.bool)
    # a pixel differs from its right / lower / lower-right neighbour: inside pixels on the right and lower
    # edge, and the background just above-left of the shape
    expected[0, 0:4] = True  # below / below-right of row 0 is the shape
    expected[1:3, 0] = True  # right of column 0 is the shape
    expected[1, 3] = expected[2, 1:4] = True  # shape pixels next to background at right/below
    assert torch.equal(boundary_map(mask), expected), boundary_map(mask).int()


def test_j_and_f_by_hand():
    empty = torch.zeros(1, 10, 10, dtype=torch.bool)
    square = empty.clone()
    square[0, 2:6, 2:6] = True
    assert region_similarity(empty, empty).item() == 1.0  # both empty
    assert region_similarity(square, empty).item() == 0.0
    half = empty.clone()
    half[0, 2:6, 2:4] = True
    assert region_similarity(half, square).item() == pytest.approx(0.5)
    assert contour_accuracy(empty, empty).item() == 1.0
    assert contour_accuracy(empty, square).item() == 0.0  # no prediction: precision 1, recall 0
    assert contour_accuracy(square, empty).item() == 0.0
    # shifted by 2 pixels: within a tolerance of 2, every boundary pixel matches; with tolerance 1, not all
    shifted = torch.roll(square, 2, dims=-1)
    assert contour_accuracy(shifted, square, radius=2).item() == 1.0
    assert contour_accuracy(shifted, square, radius=1).item() < 1.0
    assert boundary_radius(480, 854) == math.ceil(0.008 * math.hypot(480, 854)) == 8


def test_first_and_last_frames_are_excluded():
    truth = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    truth[:, 0, 2:5, 2:5] = True
    pred = truth.clone()
    pred[0] = pred[-1] = False  # wrong only in the frames DAVIS ignores
    scores = VOSScores()
    j, f = scores.update(pred, truth)
    assert j.item() == 1.0 and f.item() == 1.0
    pred[1] = False
    scores.update(pred, truth)
    assert scores.compute()["J"] == pytest.approx((1.0 + 0.5) / 2)
    with pytest.raises(ValueError, match="frames leave none"):
        sequence_scores(pred[:2], truth[:2])
