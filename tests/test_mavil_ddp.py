"""MAViL's negatives across DDP ranks: on 2 CPU processes (gloo) each holding half of a global batch, the stage-1
losses and the DDP-averaged gradients equal those of one process on the whole batch."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("mavil_ddp_worker.py")


def _worker_module():
    spec = importlib.util.spec_from_file_location("mavil_ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "ranks.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(WORKER), str(out)], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def one_process():
    module, batch, masks = _worker_module().build()
    losses = module.compute_losses(batch, masks=masks)
    losses["loss"].backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in losses.items()}, grads


def test_contrastive_losses_equal_the_single_process_global_batch(two_ranks, one_process):
    single, _ = one_process
    for rank_losses in two_ranks["losses"]:  # every rank computes the global-batch InfoNCE
        for term in ("inter", "intra_audio", "intra_video"):
            assert rank_losses[term] == pytest.approx(single[term], rel=1e-5, abs=1e-6), term


def test_mean_loss_over_ranks_equals_the_single_process_loss(two_ranks, one_process):
    single, _ = one_process
    for term in ("loss", "recon_audio", "recon_video"):
        mean = sum(r[term] for r in two_ranks["losses"]) / len(two_ranks["losses"])
        assert mean == pytest.approx(single[term], rel=1e-5), term


def test_ddp_averaged_gradients_equal_the_single_process_gradients(two_ranks, one_process):
    _, single = one_process
    grads = two_ranks["grads"]
    assert set(single) <= set(grads)
    for name, grad in single.items():
        assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-6), name
    # the projection heads only get gradient through the contrastive terms: the gather is what makes them match
    assert grads["model.audio_projection.weight"].abs().sum() > 0


def test_without_gathering_the_loss_differs(two_ranks, one_process):
    """The control: local-only negatives give a different (smaller-batch) loss, so the tests above can fail."""
    single, _ = one_process
    for local in two_ranks["local_inter"]:
        assert local != pytest.approx(single["inter"], rel=1e-3)
