"""Interactive single-image evaluation (mIoU after simulated clicks): click placement on hand-made masks,
the click loop's calls, an oracle scoring 1.0, a tiny SAM 2 end to end through the image predictor and
through SAM2FineTune's validation, the prompt generator's state in checkpoints, and ``unveil clicks``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from unveil.finetune.click_eval import (
    ClickScores,
    click_ious,
    evaluate_clicks,
    first_click,
    interior_point,
    next_click,
)

UNVEIL = str(Path(sys.executable).parent / "unveil")


def _rect(h, w, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# ------------------------------------------------------------------------------------------ click placement


def test_first_click_is_the_interior_most_pixel():
    # an L: a 21x21 square (rows 2..22, columns 2..22) with a thin arm to the right
    truth = _rect(40, 60, 2, 23, 2, 23) | _rect(40, 60, 10, 13, 23, 58)
    assert first_click(truth) == (12, 12, 1)  # the square's centre, not the arm
    # the image border is a boundary: a mask filling the image is deepest at its centre
    assert first_click(np.ones((9, 9), dtype=bool)) == (4, 4, 1)
    # ties go to the first pixel in raster order (an even side has four centre pixels)
    x, y, depth = interior_point(_rect(20, 20, 4, 8, 4, 8))
    assert (x, y, depth) == (5, 5, 2.0)
    # torch tensors are taken as well
    assert first_click(torch.from_numpy(truth)) == (12, 12, 1)


def test_correction_click_goes_into_the_largest_error_region_with_its_sign():
    truth = _rect(64, 64, 10, 50, 10, 50)
    # the prediction misses a 20x20 block of the object (false negative) and spills 6x6 outside (false positive)
    pred = truth & ~_rect(64, 64, 12, 32, 12, 32) | _rect(64, 64, 54, 60, 54, 60)
    x, y, label = next_click(truth, pred)
    assert label == 1 and 12 <= x < 32 and 12 <= y < 32
    assert (x, y) == (21, 21)
    # now the larger error is a false positive: a negative click inside it
    pred = truth | _rect(64, 64, 0, 8, 52, 64) | _rect(64, 64, 51, 64, 0, 20)
    pred &= ~_rect(64, 64, 20, 22, 20, 22)
    x, y, label = next_click(truth, pred)
    assert label == 0 and 0 <= x < 20 and 51 <= y < 64 and not truth[y, x]
    # an exact prediction takes no click; nothing predicted: the first click again
    assert next_click(truth, truth) is None
    assert next_click(truth, np.zeros_like(truth)) == first_click(truth)
    with pytest.raises(ValueError, match="differ in shape"):
        next_click(truth, truth[:10])


# ---------------------------------------------------------------------------------------------- click loop


class _Oracle:
    """Predicts the truth exactly (three copies with the first scored best)."""

    def __init__(self, truths):
        self.truths = truths
        self.current = None

    def set_image(self, image):
        self.current = self.truths[id(image)] if isinstance(self.truths, dict) else self.truths

    def predict(self, point_coords=None, point_labels=None, mask_input=None, multimask_output=True):
        truth = self.current.astype(np.float32)
        count = 3 if multimask_output else 1
        return np.stack([truth] * count), np.linspace(1, 0.5, count), np.zeros((count, 4, 4), np.float32)


def test_an_oracle_predictor_scores_one():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    masks = np.stack([_rect(32, 32, 2, 10, 2, 10), _rect(32, 32, 12, 30, 5, 25), np.zeros((32, 32), bool)])

    class Oracle(_Oracle):
        def predict(self, point_coords=None, point_labels=None, mask_input=None, multimask_output=True):
            x, y = point_coords[0].astype(int)
            self.current = next(m for m in masks if m[y, x])  # the object under the first click
            return super().predict(point_coords, point_labels, mask_input, multimask_output)

    result = evaluate_clicks(Oracle(None), [(image, masks)], num_clicks=5)
    assert result["miou@1"] == result["miou@5"] == 1.0
    assert result["objects"] == 2 and result["images"] == 1  # the empty mask is left out


def test_click_loop_feeds_the_best_mask_back_with_every_click():
    truth = _rect(32, 32, 4, 28, 4, 28)
    calls = []

    class Growing:
        """Three candidates on the first click (the second scored best); each click adds a quarter."""

        def predict(self, point_coords=None, point_labels=None, mask_input=None, multimask_output=True):
            calls.append((point_coords.copy(), point_labels.copy(), mask_input, multimask_output))
            k = len(calls)
            pred = truth.copy()
            pred[4 + 6 * min(k, 4) :, :] = False  # k quarters of the object's rows
            low = np.full((1, 8, 8), float(k), np.float32)
            if multimask_output:
                return (
                    np.stack([np.zeros_like(pred), pred, np.ones_like(pred)]).astype(np.float32),
                    np.array([0.1, 0.9, 0.3]),
                    np.concatenate([low - 1, low, low + 1]),
                )
            return pred[None].astype(np.float32), np.array([0.5]), low

    ious = click_ious(Growing(), truth, num_clicks=5)
    np.testing.assert_allclose(ious, [0.25, 0.5, 0.75, 1.0, 1.0])
    assert len(calls) == 4  # exact after the fourth click: no fifth call
    assert calls[0][3] is True and calls[0][2] is None and all(c[3] is False for c in calls[1:])
    for k, (coords, labels, mask_input, _) in enumerate(calls[1:], start=1):
        assert coords.shape == (k + 1, 2) and labels.tolist() == [1] * (k + 1)  # missed rows: positive clicks
        # the low-res logits of the mask kept at the click before
        assert mask_input.shape == (1, 8, 8) and float(mask_input.max()) == k
        x, y = coords[-1].astype(int)
        assert truth[y, x] and y >= 4 + 6 * k  # in the part still missed


def test_click_scores_sum_and_average():
    scores = ClickScores(3)
    scores.update([0.5, 0.6, 0.7])
    scores.update([1.0, 1.0, 1.0])
    totals = scores.totals()
    assert totals.tolist() == [1.5, 1.6, 1.7, 2.0]
    means = ClickScores.means(totals + totals)  # as an all-reduce over two ranks sums them
    assert means == pytest.approx({"miou@1": 0.75, "miou@2": 0.8, "miou@3": 0.85})
    assert ClickScores.means(ClickScores(5).totals()) == {}
    with pytest.raises(ValueError, match="num_clicks"):
        click_ious(None, np.ones((2, 2), bool), num_clicks=0)


# ------------------------------------------------------------------------------------------- a tiny SAM 2


def _tiny_model(image_size: int = 64):
    from unveil.models.sam2 import SAM2, SAM2Config

    torch.manual_seed(0)
    return SAM2(
        SAM2Config(trunk="tiny", image_size=image_size, trunk_args={"window_spec": (8, 4, 8, 4)})
    ).eval()


def test_tiny_sam2_end_to_end_through_the_image_predictor():
    from unveil.finetune.click_eval import TensorImagePredictor
    from unveil.models.sam2 import ImagePredictor

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)  # not square: masks at the image's size
    masks = np.stack([_rect(48, 40, 4, 20, 4, 30), _rect(48, 40, 25, 45, 10, 38)])
    model = _tiny_model()
    result = evaluate_clicks(ImagePredictor(model), [(image, masks)], num_clicks=5)
    assert result["objects"] == 2 and set(result) >= {"miou@1", "miou@5"}
    assert all(0.0 <= result[f"miou@{k}"] <= 1.0 for k in range(1, 6))
    predictor = ImagePredictor(model)
    predictor.set_image(image)
    again = click_ious(predictor, masks[0], num_clicks=2)
    assert again == click_ious(predictor, masks[0], num_clicks=2)  # deterministic
    # the tensor route (validation batches) on the model's own input
    predictor = TensorImagePredictor(model)
    predictor.set_normalized(torch.randn(3, 64, 64))
    assert len(click_ious(predictor, torch.from_numpy(_rect(64, 64, 5, 30, 5, 30)), 5)) == 5
    with pytest.raises(ValueError, match=r"\[3, 64, 64\]"):
        predictor.set_normalized(torch.randn(3, 32, 32))


def _vos(tmp_path: Path) -> Path:
    from unveil.datasets.synth_vos import make_vos_folder

    return make_vos_folder(tmp_path / "vos", train_videos=2, val_videos=2, frames=8, size=64)


def test_validation_step_scores_clicks_on_a_one_frame_sample(tmp_path):
    from unveil.datasets.sam2_data import SAM2DataModule, VOSFirstFrames
    from unveil.finetune.sam2_train import SAM2FineTune

    root = _vos(tmp_path)
    sample = VOSFirstFrames(root, size=64, max_videos=1)[0]
    # the images' loader beside the videos' one; reading it leaves the global random stream where it was
    data = SAM2DataModule(root, image_size=64, num_workers=0, val_first_frames=True)
    data.setup("validate")
    videos, images = data.val_dataloader()
    state = torch.get_rng_state()
    first = next(iter(images))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first["frames"], sample["frames"]) and len(images) == len(videos) == 2
    module = SAM2FineTune(size="tiny", image_size=64, trunk_args={"window_spec": (8, 4, 8, 4)}, val_clicks=3)
    module.eval()
    module.on_validation_epoch_start()
    module.validation_step(sample, 0, dataloader_idx=1)
    scores = module._click_scores
    assert scores.count == sample["masks"].shape[1] and scores.sums.shape == (3,)
    assert all(0.0 <= v <= 1.0 for v in ClickScores.means(scores.totals()).values())
    with pytest.raises(ValueError, match="one frame"):
        module.validation_step({"frames": torch.zeros(2, 3, 64, 64), "masks": None, "key": "k"}, 0)


@pytest.mark.slow
def test_validation_logs_miou_on_single_images_and_jf_on_videos(tmp_path):
    import lightning as L
    from unveil.datasets.sam2_data import SAM2DataModule, VOSFirstFrames
    from unveil.finetune.sam2_train import SAM2FineTune

    root = _vos(tmp_path)
    images = VOSFirstFrames(root, size=64, max_videos=1)
    sample = images[0]
    assert sample["frames"].shape == (1, 3, 64, 64) and sample["masks"].shape[0] == 1
    assert sample["masks"].shape[2:] == (64, 64) and sample["masks"][0].flatten(1).any(1).all()
    # the first frames of the validation videos as images, beside the videos: both loaders, plain keys
    data = SAM2DataModule(root, image_size=64, num_workers=0, val_first_frames=True, val_videos=1)
    module = SAM2FineTune(
        size="tiny", image_size=64, trunk_args={"window_spec": (8, 4, 8, 4)}, val_max_frames=4, vis_frames=0
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    results = trainer.validate(module, datamodule=data, verbose=False)
    assert len(data.val_image_set) == 1 and len(results) == 2
    assert all(
        set(metrics) == {"val/J", "val/F", "val/J&F", "val/miou@1", "val/miou@5"} for metrics in results
    )
    values = results[0]
    assert 0.0 <= values["val/miou@1"] <= 1.0 and 0.0 <= values["val/miou@5"] <= 1.0
    # images only (no root: no validation videos): clicks, no J&F
    data = SAM2DataModule(image_size=64, train_dataset=images, val_images=images, num_workers=0)
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    assert set(metrics) == {"val/miou@1", "val/miou@5"}


# ------------------------------------------------------------------------------- prompt generator on resume


def test_prompt_generator_state_travels_with_the_checkpoint(tmp_path):
    from unveil.finetune.sam2_train import SAM2FineTune

    args = {"size": "tiny", "image_size": 64, "trunk_args": {"window_spec": (8, 4, 8, 4)}}
    module = SAM2FineTune(**args, prompt_seed=3)
    torch.rand(5, generator=module.generator)  # some training steps' draws
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "state.ckpt")  # a plain tensor: loads with weights_only
    checkpoint = torch.load(tmp_path / "state.ckpt", weights_only=True)
    expected = torch.rand(4, generator=module.generator)
    resumed = SAM2FineTune(**args, prompt_seed=3)
    resumed.on_load_checkpoint(checkpoint)
    assert torch.equal(torch.rand(4, generator=resumed.generator), expected)
    fresh = SAM2FineTune(**args, prompt_seed=3)
    fresh.on_load_checkpoint({})  # an older checkpoint without the state: the seed's stream
    assert not torch.equal(torch.rand(4, generator=fresh.generator), expected)


# ------------------------------------------------------------------------------------------- unveil clicks


def _unveil(*args: str, cwd: Path, code: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [UNVEIL, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == code, result.stderr[-3000:]
    return result


def _finetune_checkpoint(path: Path) -> None:
    """A SAM2FineTune checkpoint as `unveil fit` writes it (state dict, hyperparameters, loop counters)."""
    import lightning
    from unveil.finetune.sam2_train import SAM2FineTune

    module = SAM2FineTune(size="tiny", image_size=64, trunk_args={"window_spec": [8, 4, 8, 4]})
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
    }
    torch.save(checkpoint, path)


@pytest.mark.slow
def test_unveil_clicks_on_a_finetune_checkpoint_and_generated_videos(tmp_path):
    import json

    _unveil(
        "synth",
        "vos",
        "--out",
        "vos",
        "--train_videos",
        "1",
        "--val_videos",
        "2",
        "--size",
        "64",
        "--frames",
        "8",
        cwd=tmp_path,
    )
    _finetune_checkpoint(tmp_path / "last.ckpt")
    out = _unveil("clicks", "last.ckpt", "--data", "vos", "--json", "clicks.json", cwd=tmp_path)
    result = json.loads((tmp_path / "clicks.json").read_text())
    assert result["images"] == 2 and result["objects"] >= 4
    assert all(0.0 <= result[f"miou@{k}"] <= 1.0 for k in range(1, 6))
    assert f"miou@1 {result['miou@1']:.4f}  miou@5 {result['miou@5']:.4f}" in out.stdout
    assert "every weight from 'last.ckpt'" == result["weights"]
    # mistakes: one line, exit 2
    for args, message in (
        (["missing.ckpt", "--data", "vos"], "checkpoint not found"),
        (["last.ckpt", "--data", "nowhere"], "no folder 'nowhere'"),
        (["last.ckpt", "--data", "vos", "--clicks", "0"], "--clicks must be at least 1"),
    ):
        error = _unveil("clicks", *args, cwd=tmp_path, code=2).stderr.strip()
        assert message in error and len(error.splitlines()) == 1, error


@pytest.mark.slow
def test_clicks_command_on_an_official_checkpoint_matches_the_model_in_memory(tmp_path, capsys):
    import json

    from unveil.datasets.sam2_data import VOSFirstFrames
    from unveil.launch import clicks
    from unveil.launch.cli import UsageError
    from unveil.models.sam2 import SAM2, ImagePredictor, SAM2Config

    root = _vos(tmp_path)
    torch.manual_seed(1)
    reference = SAM2(SAM2Config(trunk="tiny", image_size=128)).eval()
    torch.save({"model": reference.official_state_dict()}, tmp_path / "sam2.1_tiny.pt")
    args = [str(tmp_path / "sam2.1_tiny.pt"), "--data", str(root), "--images", "1", "--clicks", "2"]
    official = ["--size", "tiny", "--image-size", "128", "--json", str(tmp_path / "r.json")]
    assert clicks.main([*args, *official]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["images"] == 1 and "every weight from" in result["weights"]
    sample = VOSFirstFrames(root, max_videos=1, transform=lambda frames, masks: (frames, masks))[0]
    image, masks = sample["frames"][0].permute(1, 2, 0).numpy(), sample["masks"][0].numpy()
    expected = evaluate_clicks(ImagePredictor(reference), [(image, masks)], num_clicks=2)
    assert result["miou@1"] == expected["miou@1"] and result["miou@2"] == expected["miou@2"]
    assert f"miou@1 {expected['miou@1']:.4f}  miou@2 {expected['miou@2']:.4f}" in capsys.readouterr().out
    with pytest.raises(UsageError, match="not a SAM2FineTune checkpoint; give the SAM 2 size with --size"):
        clicks.main(args)


@pytest.mark.slow
def test_the_click_loop_runs_on_the_official_image_predictor_alike():
    """The same clicks and IoUs through the official ``SAM2ImagePredictor`` (random SAM 2.1 tiny weights at
    128 px) and through unveil's ImagePredictor holding the same weights."""
    sam2_official = pytest.importorskip("sam2.build_sam")
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from unveil.models.sam2 import SAM2, ImagePredictor, SAM2Config

    torch.manual_seed(0)
    official = sam2_official.build_sam2(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        None,
        device="cpu",
        hydra_overrides_extra=["++model.image_size=128"],
    ).eval()
    ours = SAM2(SAM2Config(trunk="tiny", image_size=128)).eval()
    ours.load_official_state_dict({"model": official.state_dict()})
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 120, 3), dtype=np.uint8)
    masks = np.stack([_rect(96, 120, 10, 60, 10, 70), _rect(96, 120, 50, 90, 60, 115)])
    reference = SAM2ImagePredictor(official)
    reference._bb_feat_sizes = [(32, 32), (16, 16), (8, 8)]  # the official class assumes 1024 px inputs
    expected = evaluate_clicks(reference, [(image, masks)], num_clicks=5)
    result = evaluate_clicks(ImagePredictor(ours), [(image, masks)], num_clicks=5)
    assert result["objects"] == expected["objects"] == 2
    assert 0.0 < expected["miou@1"] < 1.0  # a comparison of something (measured: 0.2019 on both sides)
    for k in range(1, 6):
        assert abs(result[f"miou@{k}"] - expected[f"miou@{k}"]) < 1e-3, (k, result, expected)


def test_clicks_command_on_an_sa1b_folder_scores_each_usable_image_once(tmp_path, capsys):
    import json

    from PIL import Image
    from unveil.datasets.sav import encode_rle
    from unveil.launch import clicks

    root = tmp_path / "sa1b"
    root.mkdir()
    rng = np.random.default_rng(0)
    boxes = {
        "sa_1": [_rect(40, 56, 2, 14, 3, 20), _rect(40, 56, 20, 36, 30, 50)],
        "sa_2": [],  # no usable mask: left out
        "sa_3": [_rect(40, 56, 5, 35, 5, 35)],
        "sa_4": [_rect(40, 56, 5, 35, 5, 35)],  # a truncated JPEG: left out
        "sa_5": [_rect(40, 56, 10, 30, 10, 40)],  # a greyscale JPEG, as some real photos are: scored as RGB
    }
    for name, masks in boxes.items():
        channels = (40, 56) if name == "sa_5" else (40, 56, 3)
        Image.fromarray(rng.integers(0, 256, channels, dtype=np.uint8)).save(root / f"{name}.jpg")
        if name == "sa_4":
            (root / f"{name}.jpg").write_bytes((root / f"{name}.jpg").read_bytes()[:200])
        annotations = [
            {"id": i, "segmentation": encode_rle(m), "area": int(m.sum()), "stability_score": 0.95}
            for i, m in enumerate(masks)
        ]
        image = {"image_id": int(name[3:]), "width": 56, "height": 40, "file_name": f"{name}.jpg"}
        (root / f"{name}.json").write_text(json.dumps({"image": image, "annotations": annotations}))
    _finetune_checkpoint(tmp_path / "last.ckpt")
    args = [str(tmp_path / "last.ckpt"), "--data", str(root), "--layout", "sa1b", "--clicks", "1"]
    assert clicks.main([*args, "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["images"] == 3 and result["objects"] == 4 and 0.0 <= result["miou@1"] <= 1.0
    assert result["left_out"] == 2  # the truncated JPEG and the image without a mask
    assert "miou@5" not in result and "(4 objects, 3 images, 2 left out" in capsys.readouterr().out


class _FixedImages(torch.utils.data.Dataset):
    """Four one-frame samples with two objects each (the prompt draws do not depend on the data order)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        frames = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(index))
        masks = torch.from_numpy(np.stack([_rect(64, 64, 5, 30, 5, 30), _rect(64, 64, 30, 60, 20, 50)]))[None]
        return {"frames": frames, "masks": masks, "key": str(index)}


@pytest.mark.slow
def test_a_resumed_fit_continues_the_prompt_generator(tmp_path):
    import lightning as L
    from unveil.datasets.sam2_data import SAM2DataModule
    from unveil.finetune.sam2_train import SAM2FineTune

    def fit(max_steps: int, ckpt_path=None):
        module = SAM2FineTune(
            size="tiny", image_size=64, trunk_args={"window_spec": (8, 4, 8, 4)}, prompt_seed=5
        )
        data = SAM2DataModule(image_size=64, train_dataset=_FixedImages(), num_workers=0)
        trainer = L.Trainer(
            accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return trainer, module

    trainer, _ = fit(1)
    trainer.save_checkpoint(tmp_path / "step1.ckpt")
    _, continuous = fit(2)
    _, resumed = fit(2, ckpt_path=tmp_path / "step1.ckpt")
    assert torch.equal(resumed.generator.get_state(), continuous.generator.get_state())
    _, fresh = fit(1)  # one step from the seed alone: another state
    assert not torch.equal(fresh.generator.get_state(), continuous.generator.get_state())
