"""MAEPretrainModule: the lr scaling rule, the warmup + cosine schedule, parameter groups, a short fit that writes
reconstruction pictures and a checkpoint, and a loss that goes down on a fixed batch."""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from unveil.models import MaskedAutoencoderHiera
from unveil.pretrain import MAEPretrainModule
from unveil.pretrain.optim import (
    scaled_lr,
    warmup_cosine_lr,
    warmup_cosine_scheduler,
    weight_decay_param_groups,
)
from unveil.pretrain.visualize import reconstruction_grid, send_to_loggers

TINY = {"embed_dim": 32, "num_heads": 1, "stages": (1, 1, 1, 1), "decoder_embed_dim": 32, "decoder_depth": 1,
        "decoder_num_heads": 1}


def tiny_image_mae(size: int = 64, **kwargs) -> MaskedAutoencoderHiera:
    return MaskedAutoencoderHiera(input_size=(size, size), **{**TINY, **kwargs})


def tiny_video_mae(frames: int = 4, size: int = 64) -> MaskedAutoencoderHiera:
    return MaskedAutoencoderHiera(
        input_size=(frames, size, size), q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7),
        patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), sep_pos_embed=True, mask_ratio=0.75, **TINY,
    )


def smooth_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Learnable inputs: per-image colour gradients plus a bright square, roughly unit-normalised."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1, 1, size)
    images = []
    for _ in range(count):
        a, b, c = torch.randn(3, 3, 1, 1, generator=g)
        image = a * ramp.view(1, -1, 1) + b * ramp.view(1, 1, -1) + c
        x, y = torch.randint(0, size // 2, (2,), generator=g).tolist()
        image[:, y : y + size // 3, x : x + size // 3] += 1.5
        images.append(image)
    return torch.stack(images)


class DictDataset(Dataset):
    def __init__(self, tensors: torch.Tensor, key: str):
        self.tensors, self.key = tensors, key

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, index: int) -> dict:
        return {self.key: self.tensors[index], "label": 0}


def trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    defaults = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
                "default_root_dir": tmp_path}
    return pl.Trainer(**{**defaults, **kwargs})


# ---------------------------------------------------------------------------------------------------- optimiser


def test_linear_scaling_rule():
    assert scaled_lr(8e-4, 256) == pytest.approx(8e-4)
    assert scaled_lr(8e-4, 4096) == pytest.approx(8e-4 * 16)
    assert scaled_lr(1.6e-3, 512) == pytest.approx(3.2e-3)
    with pytest.raises(ValueError):
        scaled_lr(1e-3, 0)


def test_warmup_cosine_matches_closed_form():
    lr, min_lr, total, warmup = 2e-3, 1e-5, 100, 10
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=lr)
    scheduler = warmup_cosine_scheduler(optimizer, total_steps=total, warmup_steps=warmup, min_lr=min_lr)
    expected = {
        0: 0.0,                                   # warmup starts from zero
        5: lr * 5 / 10,                           # linear
        10: lr,                                   # peak where the warmup ends
        55: min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * 45 / 90)),  # half way down: the mean
        99: min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * 89 / 90)),
        100: min_lr,                              # the end of the schedule
        150: min_lr,                              # and it stays there
    }
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    for step, value in expected.items():
        scheduler.step_update(num_updates=step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(value, rel=1e-9, abs=1e-12), step
        assert warmup_cosine_lr(step, lr, total, warmup, min_lr) == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert expected[55] == pytest.approx((lr + min_lr) / 2)


def test_schedule_rejects_bad_lengths():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError, match="finite"):
        warmup_cosine_scheduler(optimizer, total_steps=float("inf"), warmup_steps=0)
    with pytest.raises(ValueError, match="warmup"):
        warmup_cosine_scheduler(optimizer, total_steps=10, warmup_steps=11)


def test_param_groups_no_decay_on_norms_biases_and_pos_embeds():
    model = tiny_image_mae()
    groups = weight_decay_param_groups(model, weight_decay=0.05)
    by_id = {id(p): name for name, p in model.named_parameters()}
    decay = {by_id[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {by_id[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decay | no_decay == set(by_id.values()) and not decay & no_decay
    assert {"pos_embed", "decoder_pos_embed", "mask_token"} <= no_decay
    for name, param in model.named_parameters():
        if param.ndim <= 1:  # LayerNorm weights and biases, all biases
            assert name in no_decay, name
    assert all(model.get_parameter(name).ndim >= 2 for name in decay)
    assert any("attn.qkv.weight" in name for name in decay) and "patch_embed.proj.weight" in decay


# ------------------------------------------------------------------------------------------------------ module


def test_input_key_detection():
    module = MAEPretrainModule(tiny_image_mae())
    x = torch.zeros(1, 3, 64, 64)
    assert module.get_input({"image": x, "label": 0}) is x
    assert module.get_input({"video": x}) is x
    assert module.get_input(x) is x
    with pytest.raises(KeyError, match="input keys"):
        module.get_input({"fbank": x})
    with pytest.raises(ValueError, match="input_key"):
        MAEPretrainModule(tiny_image_mae(), input_key="audio")


def test_short_fit_writes_pictures_checkpoint_and_follows_schedule(tmp_path):
    """A 2-epoch fit on generated JPEGs: lr from the scaling rule, per-step warmup + cosine, a PNG at steps
    0, 2 and 4 (and in TensorBoard), a checkpoint, train and val losses logged."""
    from unveil.datasets import ImageDataModule
    from unveil.datasets.synth import make_image_folder

    root = make_image_folder(tmp_path / "shapes", num_classes=2, train_per_class=4, val_per_class=2, size=64,
                             progress=False)
    data = ImageDataModule(str(root), input_size=64, batch_size=2, loader={"num_workers": 0})
    module = MAEPretrainModule(tiny_image_mae(),
                               optimizer={"base_lr": 1e-3, "warmup_epochs": 1, "min_lr": 1e-6},
                               pictures={"every_n_steps": 2, "num_samples": 2})

    seen_lrs = []

    class RecordLR(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen_lrs.append(optimizer.param_groups[0]["lr"])

    logger = pl.loggers.TensorBoardLogger(tmp_path / "logs", name="")
    fit = trainer(tmp_path, max_epochs=2, accumulate_grad_batches=2, logger=logger, log_every_n_steps=1,
                  enable_checkpointing=True, callbacks=[RecordLR()])
    with mock.patch.object(type(logger.experiment), "add_image", autospec=True) as add_image:
        fit.fit(module, datamodule=data)

    # 8 images / batch 2 = 4 batches per epoch, 2 per optimiser step: 4 steps in all, 2 of warmup
    assert fit.global_step == 4 and fit.estimated_stepping_batches == 4
    assert module.effective_batch_size == 2 * 1 * 1 * 2
    assert module.peak_lr == pytest.approx(1e-3 * 4 / 256)
    expected = [warmup_cosine_lr(step, module.peak_lr, 4, 2, 1e-6) for step in range(4)]
    assert seen_lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert expected[0] == 0.0 and expected[2] == pytest.approx(module.peak_lr)

    pictures = sorted(p.name for p in (Path(fit.log_dir) / "reconstructions").glob("*.png"))
    assert pictures == ["step_000000.png", "step_000002.png", "step_000004.png"]
    from PIL import Image

    with Image.open(Path(fit.log_dir) / "reconstructions" / "step_000000.png") as image:
        # 2 rows x 4 columns of 64x64 tiles with 2-pixel padding
        assert image.size == (4 * 64 + 5 * 2, 2 * 64 + 3 * 2)
    assert [call.kwargs["global_step"] for call in add_image.call_args_list] == [0, 2, 4]
    assert list(Path(tmp_path).rglob("*.ckpt"))
    for key in ("train/loss", "train/lr", "train/samples_per_sec", "val/loss"):
        assert key in fit.callback_metrics, key
    assert module.hparams.optimizer["base_lr"] == 1e-3 and "model" not in module.hparams


def test_fixed_batch_loss_goes_down(tmp_path):
    """Overfitting 4 images for 40 steps lowers the loss measured under one fixed mask."""
    torch.manual_seed(0)
    images = smooth_images(4, 64)
    model = tiny_image_mae()
    module = MAEPretrainModule(model, optimizer={"lr": 3e-3, "warmup_steps": 5, "weight_decay": 0.0}, pictures={"every_n_steps": 0})
    mask = model.get_random_mask(images, 0.6)

    def fixed_mask_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = model(images, mask=mask).loss.item()
        model.train()
        return loss

    before = fixed_mask_loss()
    loader = DataLoader(DictDataset(images, "image"), batch_size=4)
    trainer(tmp_path, max_steps=40, max_epochs=-1).fit(module, loader)
    after = fixed_mask_loss()
    assert after < 0.6 * before, (before, after)


def test_video_fit_without_datamodule(tmp_path):
    """Video batches from a plain DataLoader: batch size read from the loader, pictures from training samples."""
    clips = torch.randn(4, 3, 4, 64, 64)
    module = MAEPretrainModule(tiny_video_mae(),
                               optimizer={"base_lr": 1e-3, "warmup_steps": 1},
                               pictures={"every_n_steps": 1, "num_samples": 1, "frames": 2})
    fit = trainer(tmp_path, max_steps=2, max_epochs=-1)
    fit.fit(module, DataLoader(DictDataset(clips, "video"), batch_size=2))
    assert module.effective_batch_size == 2
    pictures = sorted((tmp_path / "reconstructions").glob("*.png"))
    assert [p.name for p in pictures] == ["step_000000.png", "step_000001.png", "step_000002.png"]
    from PIL import Image

    with Image.open(pictures[0]) as image:  # 1 sample x 2 frames = 2 rows, 4 columns
        assert image.size == (4 * 64 + 5 * 2, 2 * 64 + 3 * 2)


def test_fixed_picture_mask_and_validation_masks_do_not_touch_training_rng():
    module = MAEPretrainModule(tiny_image_mae(), pictures={"every_n_steps": 1})
    x = smooth_images(2, 64)
    torch.manual_seed(123)
    first = module.reconstruction_picture(x)
    after_first = torch.rand(1)
    torch.manual_seed(123)
    torch.rand(1)
    second = module.reconstruction_picture(x)  # reuses the stored mask
    assert torch.equal(first, second)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after_first)  # drawing the picture left the global RNG alone
    assert first.shape[0] == 3 and 0.0 <= first.min() and first.max() <= 1.0


def test_grid_layout_and_logger_dispatch():
    images = {key: torch.zeros(3, 3, 2, 16, 16) for key in ("input", "masked", "reconstruction", "target")}
    grid = reconstruction_grid(images, mean=(0.5,) * 3, std=(0.5,) * 3, max_frames=2, padding=0)
    assert grid.shape == (3, 3 * 2 * 16, 4 * 16)  # rows: 3 samples x 2 frames; columns: 4 panels
    assert torch.allclose(grid, torch.full_like(grid, 0.5))

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    wandb, tensorboard, csv = mock.MagicMock(spec=WandbLogger), mock.MagicMock(spec=TensorBoardLogger), \
        mock.MagicMock(spec=CSVLogger)
    send_to_loggers([wandb, tensorboard, csv], "reconstructions", grid, step=7)
    wandb.log_image.assert_called_once()
    assert wandb.log_image.call_args.kwargs["key"] == "reconstructions"
    assert wandb.log_image.call_args.kwargs["step"] == 7
    tensorboard.experiment.add_image.assert_called_once()
    assert not csv.method_calls


def test_param_groups_survive_fsdp_style_wrapping():
    """FSDP flattens every parameter into a 1-D shard and renames it; the groups decided on the bare model
    must stay the same (otherwise every weight would train without decay)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from unveil.pretrain.optim import no_weight_decay_names

    model = tiny_image_mae()
    bare = weight_decay_param_groups(model, weight_decay=0.05)
    names = {id(p): name for name, p in model.named_parameters()}
    expected = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in bare}
    no_decay = no_weight_decay_names(model)

    for index, block in enumerate(model.blocks):
        model.blocks[index] = checkpoint_wrapper(block)  # names gain "_checkpoint_wrapped_module."
    for module in model.modules():  # flat 1-D shards, as FSDP's use_orig_params views are
        for key, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[key] = torch.nn.Parameter(param.detach().flatten())
    wrapped_names = {id(p): name.replace("_checkpoint_wrapped_module.", "") for name, p in model.named_parameters()}
    assert any("_checkpoint_wrapped_module" in name for name, _ in model.named_parameters())

    naive = weight_decay_param_groups(model, weight_decay=0.05)
    assert [g["weight_decay"] for g in naive] == [0.0]  # the failure this guards against
    groups = weight_decay_param_groups(model, weight_decay=0.05, no_decay_names=no_decay)
    got = {g["weight_decay"]: sorted(wrapped_names[id(p)] for p in g["params"]) for g in groups}
    assert got == expected
