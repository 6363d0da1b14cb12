"""Fine-tuning and the linear probe: starting points and their key reports, the classifier math (layer decay,
mixup, audio masking, view averaging), the metrics against scikit-learn, and the README chain
pretrain → export → fine-tune / probe through the ``unveil`` console script.

Slow (``pytest -m slow``): the whole README chain through the console script (MAE quickstart, export,
fine-tune, probe, random-init baseline, fine-tune from the .ckpt) and the MAViL quickstart fine-tune (audio-video
decoding). The non-slow CLI test runs ``quickstart_finetune`` on a small export, and a mismatched checkpoint.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tiny_configs import TINY_MAVIL as MAVIL
from tiny_configs import lightning_checkpoint
from torch.utils.data import DataLoader, Dataset
from unveil.common.checkpoints import Architecture, architecture_of, save_backbone
from unveil.finetune import FineTuneClassifier, LinearProbe, load_pretrained_backbone
from unveil.finetune.classification import average_views
from unveil.models import MaskedAutoencoderHiera, MAViL
from unveil.models.hiera import hiera_tiny_224

UNVEIL = Path(sys.executable).with_name("unveil")
TINY = dict(
    embed_dim=32, num_heads=1, stages=(1, 1, 1, 1), decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1
)
IMAGE = dict(input_size=(64, 64), q_pool=2, **TINY)


@pytest.fixture(scope="module")
def mae(tmp_path_factory):
    torch.manual_seed(0)
    model = MaskedAutoencoderHiera(**IMAGE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # off the initial values: a wrong key cannot hide
    folder = tmp_path_factory.mktemp("mae")
    return model, lightning_checkpoint(model, folder / "last.ckpt")


@pytest.fixture(scope="module")
def mavil(tmp_path_factory):
    torch.manual_seed(1)
    model = MAViL(**MAVIL)
    return model, lightning_checkpoint(model, tmp_path_factory.mktemp("mavil") / "last.ckpt")


class Samples(Dataset):
    """Random inputs whose mean depends on the label (so a classifier can learn them), with keys."""

    def __init__(self, count: int, num_classes: int = 4, multi_label: bool = False, **shapes):
        self.count, self.num_classes, self.multi_label, self.shapes = count, num_classes, multi_label, shapes

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        label = index % self.num_classes
        sample = {k: torch.randn(*s, generator=g) + label for k, s in self.shapes.items()}
        if self.multi_label:
            sample["label"] = torch.zeros(self.num_classes)
            sample["label"][[label, (label + 1) % self.num_classes]] = 1.0
        else:
            sample["label"] = torch.tensor(label)
        sample["key"] = f"clip_{index}"
        return sample


def fit(module: pl.LightningModule, data: Dataset, steps: int = 2) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
    )
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    return trainer


# ---------------------------------------------------------------------------------------- starting points


def test_every_starting_point_loads_the_same_weights(mae, tmp_path):
    model, checkpoint = mae
    expected = model.state_dict()["blocks.2.attn.qkv.weight"]
    from unveil.models.convert import hiera_backbone_config, to_official

    official, _ = to_official(model.state_dict())
    config = hiera_backbone_config(architecture_of(model).init_args, 0)
    export = save_backbone(
        tmp_path / "export.pt", official, Architecture("unveil.models.hiera.Hiera", config)
    )
    safetensors = save_backbone(
        tmp_path / "export.safetensors",
        official,
        Architecture("unveil.models.hiera.Hiera", config),
        safetensors=True,
    )
    for source in (checkpoint, export, safetensors):
        loaded = load_pretrained_backbone(source, num_classes=5, q_pool=3, drop_path_rate=0.1)
        assert loaded.kind == "hiera" and loaded.model.q_pool == 3 and loaded.model.num_classes == 5
        assert torch.equal(loaded.model.state_dict()["blocks.2.attn.qkv.weight"], expected), source
        assert sorted(loaded.new) == [
            "head.projection.bias",
            "head.projection.weight",
            "norm.bias",
            "norm.weight",
        ]
        assert len(loaded.loaded) == len(loaded.model.state_dict()) - 4
        assert "keys loaded" in loaded.summary() and str(source) in loaded.summary()
    assert "mask_token" in load_pretrained_backbone(checkpoint).ignored  # the decoder is reported, not loaded


def test_official_hiera_checkpoint_with_its_classifier(tmp_path):
    reference = hiera_tiny_224()
    path = tmp_path / "hiera_tiny_224.pth"
    torch.save({"model_state": reference.state_dict()}, path)
    loaded = load_pretrained_backbone(path, model="hiera_tiny_224", num_classes=1000)
    assert loaded.new == [] and len(loaded.loaded) == len(reference.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded.model.eval()(x), reference.eval()(x), atol=1e-5)
    # another number of classes: the official classifier is left out and reported, a new one trains
    other = load_pretrained_backbone(path, model="hiera_tiny_224", num_classes=10)
    assert sorted(other.new) == ["head.projection.bias", "head.projection.weight"]
    assert "head.projection.weight" in other.ignored


def test_mismatches_fail_before_training_with_one_line(tmp_path, mae):
    path = tmp_path / "hiera_tiny_224.pth"
    torch.save({"model_state": hiera_tiny_224().state_dict()}, path)
    with pytest.raises(ValueError) as wrong_size:
        load_pretrained_backbone(path, model="hiera_small_224")
    with pytest.raises(ValueError) as no_model:
        load_pretrained_backbone(path)
    with pytest.raises(ValueError) as not_a_checkpoint:
        (tmp_path / "notes.pt").write_bytes(b"not a checkpoint")
        load_pretrained_backbone(tmp_path / "notes.pt")
    with pytest.raises(ValueError) as no_modality:
        load_pretrained_backbone(mae[1], modality="audio")
    for error in (wrong_size, no_model, not_a_checkpoint):
        message = str(error.value)
        assert "\n" not in message and str(tmp_path) in message, message
    assert "missing keys" in str(wrong_size.value) and "model=" in str(no_model.value)
    assert "modality" in str(no_modality.value)


def test_mavil_encoders_and_fused_backbone(mavil):
    model, checkpoint = mavil
    state = model.state_dict()
    audio = load_pretrained_backbone(checkpoint, modality="audio")
    video = load_pretrained_backbone(checkpoint, modality="video")
    fused = load_pretrained_backbone(checkpoint, modality="audio_video")
    assert torch.equal(
        audio.model.state_dict()["blocks.1.mlp.fc1.weight"], state["audio_encoder.blocks.1.mlp.fc1.weight"]
    )
    assert torch.equal(
        video.model.state_dict()["blocks.0.attn.qkv.weight"], state["video_encoder.blocks.0.attn.qkv.weight"]
    )
    assert torch.equal(
        fused.model.state_dict()["fusion_blocks.0.attn.qkv.weight"], state["fusion_blocks.0.attn.qkv.weight"]
    )
    assert audio.new == video.new == fused.new == []
    assert any(k.startswith("audio_decoder.") for k in fused.ignored)
    # the fused backbone computes what MAViL.fuse computes on unmasked inputs
    fbank, clip = torch.randn(2, 1, 64, 128), torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        a, v = fused.model.eval()(fbank, clip)
        ra, rv, _ = model.eval().fuse(
            model.audio_encoder.forward_features(fbank), model.video_encoder.forward_features(clip)
        )
    assert torch.allclose(a, ra, atol=1e-5) and torch.allclose(v, rv, atol=1e-5)


def test_random_init_keeps_the_architecture_and_loads_nothing(mae):
    model, checkpoint = mae
    loaded = load_pretrained_backbone(checkpoint, random_init=True, num_classes=3)
    assert loaded.loaded == [] and loaded.source.startswith("random init")
    assert loaded.model.config["embed_dim"] == 32
    assert not torch.equal(
        loaded.model.state_dict()["blocks.0.attn.qkv.weight"], model.state_dict()["blocks.0.attn.qkv.weight"]
    )


# ---------------------------------------------------------------------------------------- the classifier


def test_layer_decay_groups_follow_depth(mae):
    module = FineTuneClassifier(
        str(mae[1]), num_classes=4, layer_decay=0.5, backbone_overrides={"q_pool": 3}, optimizer={"lr": 1e-3}
    )
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(
        module.net, weight_decay=0.05, no_weight_decay_list=module.net.no_weight_decay(), layer_decay=0.5
    )
    scale_of = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(module.net.named_parameters())
    # 4 blocks: stem 0, blocks 1..4, the classifier (unmatched) 5
    assert scale_of[id(named["backbone.patch_embed.proj.weight"])] == (0.5**5, 0.05)
    assert scale_of[id(named["backbone.pos_embed"])] == (0.5**5, 0.0)  # position embeddings: no weight decay
    assert scale_of[id(named["backbone.blocks.0.attn.qkv.weight"])] == (0.5**4, 0.05)
    assert scale_of[id(named["backbone.blocks.3.attn.qkv.weight"])] == (0.5**1, 0.05)
    assert scale_of[id(named["backbone.blocks.3.attn.qkv.bias"])] == (0.5**1, 0.0)
    assert scale_of[id(named["backbone.norm.weight"])] == (
        0.5**1,
        0.0,
    )  # timm: the final norm joins the last block
    assert scale_of[id(named["backbone.head.projection.weight"])] == (1.0, 0.05)


def test_audio_time_frequency_masking_drops_whole_rows_and_columns(mavil):
    module = FineTuneClassifier(
        str(mavil[1]),
        modality="audio",
        num_classes=3,
        multi_label=True,
        mask_t_prob=0.5,
        mask_f_prob=0.25,
        optimizer={"lr": 1e-3},
    )
    net = module.net.train()
    fbank = torch.randn(2, 1, 64, 128)  # 4 x 8 patches
    assert net._audio_tokens(fbank).shape == (2, 1 + 2 * 6, 32)
    assert net.eval()._audio_tokens(fbank).shape == (2, 1 + 4 * 8, 32)


def test_mixup_of_video_and_multi_label_targets(mavil):
    torch.manual_seed(0)
    module = FineTuneClassifier(
        str(mavil[1]), modality="audio_video", num_classes=4, multi_label=True, mixup=0.5, optimizer={"lr": 1e-3}
    )
    samples = Samples(4, multi_label=True, fbank=(1, 64, 128), video=(3, 4, 32, 32))
    batch = {k: torch.stack([samples[i][k] for i in range(4)]) for k in ("fbank", "video", "label")}
    inputs, target = module._mix(batch)
    # one weight for both modalities and the targets: row 0 mixes with row 3
    lam = float(
        ((inputs["fbank"] - batch["fbank"].flip(0)) / (batch["fbank"] - batch["fbank"].flip(0)))[0].mean()
    )
    assert torch.allclose(
        inputs["video"], batch["video"] * lam + batch["video"].flip(0) * (1 - lam), atol=1e-4
    )
    assert torch.allclose(target, batch["label"] * lam + batch["label"].flip(0) * (1 - lam), atol=1e-4)


def test_views_of_one_video_are_averaged():
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 1, 1])
    averaged, kept = average_views(scores, labels, ["a", "a", "b", "b"])
    assert torch.allclose(averaged, torch.tensor([[0.5, 0.5], [0.4, 0.6]])) and kept.tolist() == [0, 1]
    assert average_views(scores, labels, None)[0] is scores


def test_map_is_audiomaes_mean_average_precision():
    """val/mAP (torchmetrics, macro) against util/stat.py's mean of sklearn's per-class average precision."""
    from sklearn.metrics import average_precision_score

    module = FineTuneClassifier(None, model="hiera_tiny_224", num_classes=6, multi_label=True, optimizer={"lr": 1e-3})
    rng = np.random.default_rng(0)
    target = (rng.random((40, 6)) < 0.3).astype(int)
    target[0] = 1  # every class has a positive
    scores = np.round(rng.random((40, 6)) * 0.5 + 0.5 * target * rng.random((40, 6)), 2)  # ties included
    module.val_metrics.update(torch.tensor(scores, dtype=torch.float32), torch.tensor(target))
    ours = float(module.val_metrics.compute()["mAP"])
    reference = np.mean([average_precision_score(target[:, k], scores[:, k]) for k in range(6)])
    assert abs(ours - reference) < 1e-6
    micro = average_precision_score(target, scores, average="micro")
    assert abs(ours - micro) > 1e-3  # the check tells macro from micro averaging


def test_finetune_learns_and_draws_its_confusion_matrix(mae):
    torch.manual_seed(0)
    module = FineTuneClassifier(
        str(mae[1]),
        num_classes=4,
        layer_decay=1.0,
        label_smoothing=0.0,
        backbone_overrides={"q_pool": 3},
        optimizer={"lr": 3e-3, "warmup_steps": 0},
    )
    data = Samples(8, image=(3, 32, 32))  # 32 px: one mask unit, position embeddings resampled
    trainer = fit(module, data, steps=8)
    assert trainer.callback_metrics["val/top1"] >= 0.75  # chance: 0.25
    assert module.last_picture.shape[0] == 3 and module.last_picture.shape[1] == module.last_picture.shape[2]


def test_linear_probe_trains_only_its_head(mae):
    module = LinearProbe(str(mae[1]), num_classes=4, optimizer={"lr": 1.0, "warmup_steps": 0})
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    head_before = module.head[1].weight.clone()
    fit(module, Samples(8, image=(3, 64, 64)), steps=3)
    assert all(torch.equal(before[k], v) for k, v in module.net.state_dict().items())
    assert not torch.equal(head_before, module.head[1].weight)
    assert not module.net.training and module.head[0].affine is False
    from timm.optim import Lars

    assert isinstance(module.trainer.optimizers[0], Lars)
    assert {id(p) for g in module.trainer.optimizers[0].param_groups for p in g["params"]} == {
        id(p) for p in module.head.parameters()
    }


def test_pictures_reach_tensorboard(mavil, tmp_path):
    """The per-class AP bars of a multi-label probe are in the TensorBoard event file after validation."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = LinearProbe(
        str(mavil[1]), modality="audio", num_classes=4, multi_label=True,
        optimizer={"lr": 1.0, "warmup_steps": 0})
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=TensorBoardLogger(tmp_path, name=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=2,
        check_val_every_n_epoch=None,
    )
    data = Samples(8, multi_label=True, fbank=(1, 64, 128))
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    events = EventAccumulator(str(tmp_path / "version_0"))
    events.Reload()
    assert "val/per_class_ap" in events.Tags()["images"] and "val/mAP" in events.Tags()["scalars"]
    assert module.last_picture.shape == (3, 128, 4 * 6)  # one 6-px bar per class


def test_one_hot_labels_and_classes_from_the_data(mavil):
    """Audio DataModules give one-hot float labels; without num_classes the model is built from the data's;
    ``trainer.test`` logs the same metrics under ``test/``."""

    class Data(pl.LightningDataModule):
        num_classes = 4

        def train_dataloader(self):
            return DataLoader(OneHot(8, video=(3, 4, 32, 32)), batch_size=4)

        def val_dataloader(self):
            return DataLoader(OneHot(8, video=(3, 4, 32, 32)), batch_size=4)

        test_dataloader = val_dataloader

    class OneHot(Samples):
        def __getitem__(self, index):
            sample = super().__getitem__(index)
            sample["label"] = torch.nn.functional.one_hot(sample["label"], 4).float()
            return sample

    module = FineTuneClassifier(str(mavil[1]), modality="video", optimizer={"lr": 1e-3, "warmup_steps": 0})
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=Data())
    assert module.num_classes == 4 and "val/top1" in trainer.callback_metrics
    (tested,) = trainer.test(module, datamodule=Data(), verbose=False)  # `unveil test`: the same metrics
    assert {"test/top1", "test/top5", "test/loss"} <= set(tested)


def test_multi_view_validation_takes_evenly_spread_windows_and_crops(tmp_path):
    """A folder of 20 PNG frames whose grey level is 10 x the frame index, 48 px wide and 32 px high: 3 temporal
    windows of 4 frames 2 apart start at frames 0, 6 and 13; 2 spatial 32-px crops sit at the left and the right
    (a marker column at x = 40 is only in the right one)."""
    from PIL import Image
    from unveil.datasets.common import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from unveil.datasets.finetune import FineTuneVideoDataModule
    from unveil.datasets.video import repeated_collate

    for split in ("train", "val"):
        folder = tmp_path / split / "shape" / "clip_0"
        folder.mkdir(parents=True)
        for i in range(20):
            pixels = np.full((32, 48, 3), 10 * i, dtype=np.uint8)
            pixels[:, 40] = 255
            Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    data = FineTuneVideoDataModule(
        root=str(tmp_path),
        input_size=32,
        num_frames=4,
        sampling_rate=2,
        batch_size=1,
        val_views=(3, 2),
        loader={"num_workers": 0},
    )
    data.setup()
    sample = data.val_set[0]
    assert sample["video"].shape == (6, 3, 4, 32, 32)
    grey = (
        sample["video"][:, 0, :, :, :20] * IMAGENET_DEFAULT_STD[0] + IMAGENET_DEFAULT_MEAN[0]
    )  # [V, T, 32, 20]
    first_frames = (grey[:, 0].mean(dim=(1, 2)) * 255 / 10).round().tolist()
    assert first_frames == [0, 0, 6, 6, 13, 13]  # temporal major, each window in both crops
    marker = sample["video"][:, 0, 0, :, -8:].amax(
        dim=(1, 2)
    )  # the right 8 columns: x = 40 only in the right crop
    assert (marker[1::2] > marker[0::2] + 1).all()
    batch = repeated_collate([sample, data.val_set[0]])
    assert batch["video"].shape[0] == 12 and batch["key"][:6] == ["shape/clip_0"] * 6


def test_class_balanced_epochs_follow_audiomaes_gen_weight(tmp_path):
    """Weights against gen_weight.py's formula by hand; draws without replacement, the same list in every process
    (one seed), a new one each pass; the DataModule's epoch is balanced_samples clips."""
    from unveil.datasets.finetune import ClassBalancedSampler, FineTuneAudioDataModule, class_balanced_weights
    from unveil.datasets.synth import make_audio_folder

    weights = class_balanced_weights([(0,), (0, 1), (1,), (2,)], num_classes=3)
    expected = [1000 / 2.01, 1000 / 2.01 + 1000 / 2.01, 1000 / 2.01, 1000 / 1.01]
    assert torch.allclose(weights, torch.tensor(expected, dtype=torch.float64))
    first, second = ClassBalancedSampler(weights, 3, seed=5), ClassBalancedSampler(weights, 3, seed=5)
    draws = [list(first) for _ in range(4)]
    assert draws[0] == list(second) and all(len(set(d)) == 3 for d in draws)
    assert any(d != draws[0] for d in draws[1:])
    with pytest.raises(ValueError):
        ClassBalancedSampler(weights, 5)  # more than there are, without replacement

    make_audio_folder(
        tmp_path / "audio", num_classes=2, train_per_class=3, val_per_class=1, duration=1.0, progress=False
    )
    data = FineTuneAudioDataModule(
        root=str(tmp_path / "audio"), target_length=100, batch_size=2, balanced_samples=4, loader={"num_workers": 0}
    )
    batches = list(data.train_dataloader())
    assert len(batches) == 2 and batches[0]["fbank"].shape == (2, 1, 100, 128)


# ---------------------------------------------------------------------------------------- recipes

from unveil.launch.recipes import recipes_dir, shipped_recipes

EVAL_RECIPES = [r.name for r in shipped_recipes() if r.name.startswith(("finetune_", "linprobe_"))]
CITED = re.compile(
    r"Hiera (Table 1[14]b|Sec\. 4)|MAE-ST|AudioMAE|\bMAE\b|official code|infrastructure|ImageNet-1K|"
    r"Kinetics-400|AudioSet|VGGSound|MAViL released|as recipes/|the encoder's input"
)
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|\[[\d.,\s eE+-]+\]")
UNCITED_KEYS = {"seed_everything", "num_workers", "val_batch_size"}


def test_evaluation_recipes_are_shipped_and_cite_every_value():
    sizes = ["t", "s", "b", "bplus", "l", "h"]
    expected = {f"finetune_hiera_{s}_in1k" for s in sizes} | {f"linprobe_hiera_{s}_in1k" for s in sizes}
    expected |= {f"finetune_hiera_{s}_16x224_k400" for s in ["b", "bplus", "l", "h"]}
    expected |= {"finetune_mavil_audio_as2m", "finetune_mavil_audio_as20k", "finetune_mavil_vggsound"}
    assert expected <= set(EVAL_RECIPES)
    missing = []
    for name in EVAL_RECIPES:
        for number, line in enumerate((recipes_dir() / f"{name}.yaml").read_text().splitlines(), start=1):
            code, _, comment = line.partition("#")
            match = re.match(r"^\s*-?\s*(?P<key>[\w.]+)\s*:\s*(?P<value>.+?)\s*$", code)
            if match and match["key"] not in UNCITED_KEYS and NUMBER.fullmatch(match["value"]):
                if not CITED.search(comment):
                    missing.append(f"{name}.yaml:{number}: {line.strip()}")
    assert not missing, "values without a source:\n" + "\n".join(missing)
    for name in ("quickstart_finetune", "quickstart_linprobe", "quickstart_finetune_mavil"):
        assert "not paper values" in (recipes_dir() / f"{name}.yaml").read_text().splitlines()[0]


# ---------------------------------------------------------------------------------------- the README chain


def unveil(*args: str, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(UNVEIL), *args], cwd=cwd, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == expect, (
        f"`unveil {' '.join(args)}`: {result.returncode}\n{result.stderr[-4000:]}"
    )
    return result


SHRINK = (
    "--trainer.max_steps",
    "2",
    "--trainer.val_check_interval",
    "2",
    "--trainer.log_every_n_steps",
    "1",
    "--data.init_args.batch_size",
    "4",
    "--data.init_args.loader.num_workers",
    "0",
    "--data.init_args.input_size",
    "64",
)


def synth_shapes(folder: Path) -> None:
    unveil(
        "synth",
        "images",
        "--out",
        "data/shapes",
        "--num_classes",
        "2",
        "--train_per_class",
        "8",
        "--val_per_class",
        "4",
        "--size",
        "64",
        "--progress",
        "false",
        cwd=folder,
    )


def test_quickstart_finetune_from_the_command_line(tmp_path, mae):
    """``unveil fit --config quickstart_finetune`` on a small export; a checkpoint that does not fit its
    model stops the command with one line and exit status 2, before training."""
    synth_shapes(tmp_path)
    model, _ = mae
    from unveil.models.convert import hiera_backbone_config, to_official

    official, _ = to_official(model.state_dict())
    save_backbone(
        tmp_path / "exports/hiera_t_mae.pt",
        official,
        Architecture("unveil.models.hiera.Hiera", hiera_backbone_config(architecture_of(model).init_args)),
    )
    tuned = unveil("fit", "--config", "quickstart_finetune", *SHRINK, cwd=tmp_path)
    assert "'exports/hiera_t_mae.pt': Hiera (hiera)" in tuned.stdout + tuned.stderr
    last = torch.load(
        tmp_path / "runs/quickstart_finetune/version_0/checkpoints/last.ckpt", weights_only=True
    )
    assert last["hyper_parameters"]["num_classes"] == 2  # from the data
    assert last["state_dict"]["net.backbone.head.projection.weight"].shape[0] == 2
    torch.save({"model_state": hiera_tiny_224(num_classes=0).state_dict()}, tmp_path / "official.pth")
    bad = unveil(
        "fit",
        "--config",
        "quickstart_finetune",
        *SHRINK,
        "--model.init_args.checkpoint",
        "official.pth",
        "--model.init_args.model",
        "hiera_small_224",
        cwd=tmp_path,
        expect=2,
    )
    lines = [line for line in bad.stderr.splitlines() if line.strip() and not line.startswith("Seed set to")]
    assert len(lines) == 1 and lines[0].startswith("unveil: error:"), bad.stderr  # nothing trained
    assert "official.pth" in lines[0] and "missing keys" in lines[0]


@pytest.mark.slow
def test_readme_chain_pretrain_export_finetune_and_probe(tmp_path):
    synth_shapes(tmp_path)
    unveil(
        "fit",
        "--config",
        "quickstart",
        *SHRINK,
        "--model.init_args.model.init_args.input_size=[64,64]",
        "--model.init_args.pictures.every_n_steps",
        "0",
        cwd=tmp_path,
    )
    unveil(
        "export",
        "runs/quickstart/version_0/checkpoints/last.ckpt",
        "--format",
        "unveil",
        "--out",
        "exports/hiera_t_mae.pt",
        cwd=tmp_path,
    )
    unveil("fit", "--config", "quickstart_finetune", *SHRINK, cwd=tmp_path)
    assert (tmp_path / "runs/quickstart_finetune/version_0/checkpoints/last.ckpt").is_file()
    unveil("fit", "--config", "quickstart_linprobe", *SHRINK, cwd=tmp_path)
    assert (tmp_path / "runs/quickstart_linprobe/version_0/checkpoints/last.ckpt").is_file()
    unveil(
        "fit",
        "--config",
        "quickstart_linprobe",
        *SHRINK,
        "--model.init_args.random_init",
        "true",
        cwd=tmp_path,
    )
    unveil(
        "fit",
        "--config",
        "quickstart_finetune",
        *SHRINK,
        "--model.init_args.checkpoint",
        "runs/quickstart/version_0/checkpoints/last.ckpt",
        cwd=tmp_path,
    )
    assert (tmp_path / "runs/quickstart_finetune/version_1/checkpoints/last.ckpt").is_file()


@pytest.mark.slow
def test_readme_mavil_quickstart_finetune(tmp_path, mavil):
    unveil(
        "synth",
        "audiovideo",
        "--out",
        "data/mavil_av",
        "--num_classes",
        "2",
        "--train_per_class",
        "4",
        "--val_per_class",
        "2",
        "--duration",
        "2.0",
        "--size",
        "32",
        cwd=tmp_path,
    )
    unveil(
        "fit",
        "--config",
        "quickstart_mavil",
        "--trainer.max_steps",
        "1",
        "--trainer.val_check_interval",
        "1",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.loader.num_workers",
        "0",
        "--model.init_args.pictures.every_n_steps",
        "0",
        cwd=tmp_path,
    )
    for modality in ("audio_video", "audio", "video"):
        unveil(
            "fit",
            "--config",
            "quickstart_finetune_mavil",
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
            "--data.init_args.batch_size",
            "4",
            "--data.init_args.loader.num_workers",
            "0",
            "--model.init_args.modality",
            modality,
            cwd=tmp_path,
        )


def test_randaugment_posterize_at_full_magnitude_does_not_crash():
    """timm asks for 0 bits at magnitude 10 (magnitude noise reaches it); Pillow 13 refuses 0 bits."""
    from PIL import Image
    from unveil.datasets.finetune import finetune_image_transform

    transform = finetune_image_transform(32, auto_augment="rand-m10-n1-inc1")
    policy = next(step for step in transform.transforms if hasattr(step, "ops"))
    posterize = next(op for op in policy.ops if op.name == "PosterizeIncreasing")
    image = Image.new("RGB", (32, 32), (200, 100, 50))
    posterize.prob, posterize.magnitude_std = 1.0, 0.0
    assert posterize(image).getextrema() == ((0, 0), (0, 0), (0, 0))  # 0 bits kept: black, as Pillow < 13 gave
    posterize.magnitude = 5.0  # 2 bits kept
    assert posterize(image).getpixel((0, 0)) == (192, 64, 0)
