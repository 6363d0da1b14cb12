"""Lightning DDP on shards, 2 CPU processes (gloo): ranks read disjoint samples in one-pass mode, and get
the same number of batches in resampled mode even when the shards are of different sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from unveil.datasets import make_image_folder
from unveil.datasets.shards import make_shards

SCRIPT = Path(__file__).with_name("ddp_shards_script.py")


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("images"), 4, 8, 0, size=16, progress=False)  # 32
    out = tmp_path_factory.mktemp("shards")
    even = make_shards("images", out, root, max_count=8, prefix="even", progress=False)  # 4 x 8
    uneven = make_shards("images", out, root, max_count=5, prefix="uneven", progress=False)  # 6 x 5 + 2
    return even, uneven


def run_ddp(shards: Path, out: Path, *args: str) -> list[dict]:
    """Run the DDP script (it starts its second rank itself) and return what each rank recorded."""
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONWARNINGS"] = "ignore"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(shards), str(out), *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in records] == [0, 1] and all(r["world_size"] == 2 for r in records)
    return records


def test_ranks_see_disjoint_samples(shard_sets, tmp_path):
    even, _ = shard_sets
    ranks = run_ddp(even, tmp_path, "--mode", "disjoint", "--workers", "1")
    keys = [set(r["keys"]) for r in ranks]
    assert all(len(r["keys"]) == len(set(r["keys"])) == 16 for r in ranks)  # 2 shards of 8 each
    assert not keys[0] & keys[1]
    assert len(keys[0] | keys[1]) == 32  # together: every sample once


def test_resampled_batch_counts_are_equal(shard_sets, tmp_path):
    _, uneven = shard_sets
    ranks = run_ddp(
        uneven, tmp_path, "--mode", "resampled", "--workers", "2", "--epochs", "2", "--epoch-samples", "40"
    )
    # 40 samples / (2 ranks x 4) = 5 batches per rank, rounded up to a multiple of 2 workers: 6.
    for record in ranks:
        assert record["batches"] == {"0": 6, "1": 6} and record["len"] == 6
