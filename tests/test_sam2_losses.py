"""SAM 2 loss parity with the official ``training.loss_fns.MultiStepMultiMasksAndIous`` (sam2 1.1.0)."""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from unveil.finetune.sam2_losses import SAM2Loss, StepPredictions


def _official_loss():
    # training/loss_fns.py imports one constant from training/trainer.py, whose imports (tensordict, hydra, …)
    # are not installed; the loss itself needs none of them, so give it that constant alone.
    if "training.trainer" not in sys.modules:
        try:
            import training.trainer  # noqa: F401
        except ImportError:
            shim = types.ModuleType("training.trainer")
            shim.CORE_LOSS_KEY = "core_loss"
            sys.modules["training.trainer"] = shim
    from training.loss_fns import MultiStepMultiMasksAndIous

    # the official SAM 2.1 training configuration (sam2.1_hiera_b+_MOSE_finetune.yaml)
    return MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1},
        supervise_all_iou=True,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )


def _case(
    frames: int, objects: int, steps: list[int], multimask: list[int], size: int = 24, dtype=torch.float32
):
    """Random predictions; targets are blobs, with object 1 absent in frame 1 and object 0 absent in the last."""
    targets = torch.zeros(frames, objects, size, size, dtype=torch.bool)
    for t in range(frames):
        for o in range(objects):
            y, x = torch.randint(0, size - 8, (2,)).tolist()
            targets[t, o, y : y + 4 + o * 2, x : x + 6] = True
    if frames > 1 and objects > 1:
        targets[1, 1] = False
    if frames > 1:
        targets[-1, 0] = False
    ours, official = [], []
    for t in range(frames):
        masks = [torch.randn(objects, multimask[t], size, size, dtype=dtype) * 3 for _ in range(steps[t])]
        # steer a few logits towards the target so that some IoUs are non-trivial
        masks = [
            m + 4 * (targets[t].to(dtype).unsqueeze(1) - 0.5) * torch.rand((), dtype=dtype) for m in masks
        ]
        ious = [torch.rand(objects, multimask[t], dtype=dtype) for _ in range(steps[t])]
        scores = [torch.randn(objects, 1, dtype=dtype) * 2 for _ in range(steps[t])]
        ours.append(StepPredictions(masks=masks, ious=ious, object_score_logits=scores))
        official.append(
            {
                "multistep_pred_multimasks_high_res": masks,
                "multistep_pred_ious": ious,
                "multistep_object_score_logits": scores,
            }
        )
    return ours, official, targets


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "frames,objects,steps,multimask",
    [
        (1, 1, [1], [3]),  # an image with one prompt, multimask
        (3, 2, [1, 1, 1], [1, 1, 1]),  # single-mask video, object 1 absent in frame 1
        (4, 3, [3, 1, 2, 1], [3, 1, 3, 1]),  # correction steps, multimask on conditioning frames
        (2, 3, [8, 1], [3, 1]),  # 1 prompt + 7 correction clicks
    ],
)
def test_loss_matches_official(frames, objects, steps, multimask, dtype):
    """float64: within 1e-6 absolute (in practice ~1e-14); float32: the sums are added in another order
    than the official code adds them, so within 1e-6 relative (a few float32 ulps at totals near 80)."""
    ours_in, official_in, targets = _case(frames, objects, steps, multimask, dtype=dtype)
    ours = SAM2Loss()(ours_in, targets)
    official = _official_loss()(official_in, targets)
    names = {"focal": "loss_mask", "dice": "loss_dice", "iou": "loss_iou", "object_score": "loss_class"}
    names["loss"] = "core_loss"
    for mine, theirs in names.items():
        reference = float(official[theirs])
        scale = 1.0 if dtype == torch.float64 else max(1.0, abs(reference))
        assert abs(ours[mine].item() - reference) <= 1e-6 * scale, (mine, ours[mine], reference)
    assert ours["focal"] > 0 and ours["dice"] > 0 and ours["iou"] > 0  # every term is exercised


def test_loss_gradients_match_official():
    ours_in, official_in, targets = _case(3, 2, [2, 1, 1], [3, 1, 1])
    leaves = [m.requires_grad_() for p in ours_in for m in p.masks] + [
        i.requires_grad_() for p in ours_in for i in p.ious
    ]
    SAM2Loss()(ours_in, targets)["loss"].backward()
    ours_grads = [leaf.grad.clone() for leaf in leaves]
    for leaf in leaves:
        leaf.grad = None
    _official_loss()(official_in, targets)["core_loss"].backward()
    for mine, leaf in zip(ours_grads, leaves):
        torch.testing.assert_close(mine, leaf.grad, atol=1e-7, rtol=1e-5)


def test_absent_object_gets_only_object_score_loss():
    """An object absent from every frame contributes no mask/IoU loss, whatever its logits."""
    targets = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    preds = [
        StepPredictions([torch.randn(1, 3, 8, 8) * 5], [torch.rand(1, 3)], [torch.zeros(1, 1)])
        for _ in range(2)
    ]
    out = SAM2Loss()(preds, targets)
    assert out["focal"] == 0 and out["dice"] == 0 and out["iou"] == 0
    assert out["object_score"].item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())


def test_bad_targets_are_named():
    preds = [StepPredictions([torch.randn(1, 1, 8, 8)], [torch.rand(1, 1)], [torch.zeros(1, 1)])]
    with pytest.raises(ValueError, match="targets must be"):
        SAM2Loss()(preds, torch.zeros(2, 1, 8, 8))


@pytest.mark.slow  # ~60 s on 2 shared cores: two spawned gloo processes
def test_object_count_is_all_reduced_like_the_official_loss(tmp_path):
    """Two gloo ranks with 1 and 4 objects: both normalise by 2.5, and equal the official loss on each rank."""
    here = Path(__file__).parent
    result = subprocess.run(
        [sys.executable, str(here / "sam2_loss_ddp_worker.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=here,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ddp sam2 loss ok" in result.stdout
