"""DDP equivalence of MAE pretraining: 2 CPU processes (gloo) with 4 images each read the 8 images, with the same
augmentations and the same masks, that one process with a batch of 8 reads, so the mean of their losses, the
gradients DDP averages and the weights after one AdamW step equal the single process's (within float tolerance:
only the order of the sums differs)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from unveil.datasets import make_image_folder

SCRIPT = Path(__file__).with_name("ddp_equivalence_script.py")


def _script():
    spec = importlib.util.spec_from_file_location("ddp_equivalence_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"), num_classes=2, train_per_class=8, val_per_class=0,
                             size=64, progress=False)


@pytest.fixture(scope="module")
def two_ranks(images, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PL_GLOBAL_SEED")}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(images), str(out), "--devices", "2", "--batch-size", "4"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    return ranks


@pytest.fixture(scope="module")
def one_process(images, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single")
    _script().run(str(images), str(out), devices=1, batch_size=8)
    return torch.load(out / "rank0.pt", weights_only=True)


def test_ranks_read_the_halves_of_the_single_process_batch(two_ranks, one_process):
    assert two_ranks[0]["keys"] + two_ranks[1]["keys"] == one_process["keys"]


def test_mean_rank_loss_equals_the_single_process_loss(two_ranks, one_process):
    mean = (two_ranks[0]["loss"] + two_ranks[1]["loss"]) / 2
    torch.testing.assert_close(mean, one_process["loss"], rtol=1e-5, atol=1e-6)
    # the control: the ranks' losses differ (different images and masks), so the mean is not trivially equal
    assert not torch.allclose(two_ranks[0]["loss"], two_ranks[1]["loss"], rtol=1e-3)


def test_ddp_averaged_gradients_equal_the_single_process_gradients(two_ranks, one_process):
    single = one_process["grads"]
    assert set(two_ranks[0]["grads"]) == set(single) and len(single) > 10
    for name, grad in single.items():
        for rank in two_ranks:
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_weights_after_one_step_agree(two_ranks, one_process):
    # AdamW's first step is lr * g / (|g| + eps) per weight: for a gradient near eps, the rounding of the sums
    # moves that step by a small fraction of lr (1e-3 here; measured differences are below 1e-6).
    for name, weight in one_process["weights"].items():
        for rank in two_ranks:
            torch.testing.assert_close(rank["weights"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
