"""OnlineProbes: it leaves pretraining bit-identical, and its probes measure what the features hold."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from unveil.finetune.probes import OnlineProbes
from unveil.models import MaskedAutoencoderHiera
from unveil.pretrain import MAEPretrainModule

TINY = {
    "embed_dim": 16,
    "num_heads": 1,
    "stages": (1, 1, 1, 1),
    "decoder_embed_dim": 16,
    "decoder_depth": 1,
    "decoder_num_heads": 1,
}


def trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )


def fit_tiny_mae(tmp_path, callbacks, root) -> MAEPretrainModule:
    from unveil.datasets import ImageDataModule

    pl.seed_everything(0)
    data = ImageDataModule(
        str(root), input_size=64, batch_size=4,
        loader={"num_workers": 0})  # augmentation in this process
    model = MaskedAutoencoderHiera(input_size=(64, 64), drop_path_rate=0.2, **TINY)  # drop path draws numbers
    module = MAEPretrainModule(model, optimizer={"lr": 1e-3, "warmup_steps": 1}, pictures={"every_n_steps": 0})
    trainer(tmp_path, callbacks, max_steps=6, val_check_interval=3, check_val_every_n_epoch=None).fit(
        module, datamodule=data
    )
    return module


def test_probes_leave_pretraining_bit_identical(tmp_path):
    from unveil.datasets.synth import make_image_folder

    root = make_image_folder(
        tmp_path / "shapes", num_classes=2, train_per_class=6, val_per_class=3, size=64, progress=False
    )
    plain = fit_tiny_mae(tmp_path / "plain", [], root)
    probes = OnlineProbes(every_n_steps=1, k=3)
    probed = fit_tiny_mae(tmp_path / "probed", [probes], root)
    plain_state, probed_state = plain.model.state_dict(), probed.model.state_dict()
    assert plain_state.keys() == probed_state.keys()
    for key in plain_state:
        assert torch.equal(plain_state[key], probed_state[key]), key
    assert probes.num_classes == 2  # from the datamodule
    metrics = probed.trainer.callback_metrics
    for key in ("probe/linear_top1", "probe/knn_top1"):
        assert 0.0 <= float(metrics[key]) <= 1.0, key
    assert "probe/linear_top1" not in plain.trainer.callback_metrics
    state = probes.state_dict()
    assert set(state) == {"head", "optimizer"}


class TwoBlobs(Dataset):
    """Class 0: dark images, class 1: bright images (any backbone separates them), with noise."""

    def __init__(self, count: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(count) % 2
        self.images = torch.randn(count, 3, 64, 64, generator=generator) * 0.3 + (
            self.labels * 2.0 - 1.0
        ).view(-1, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index]}


def test_probes_score_separable_features_and_chance_for_shuffled_labels(tmp_path):
    """With lr 0 the backbone is a fixed random net; its features separate dark from bright: both probes score
    1.0. The same images with labels unrelated to them score near chance."""

    class Shuffled(TwoBlobs):
        def __getitem__(self, index: int) -> dict:
            # agrees with the brightness on exactly half of the samples
            return {"image": self.images[index], "label": torch.tensor(index // 2 % 2)}

    results = {}
    for name, dataset in (("blobs", TwoBlobs), ("shuffled", Shuffled)):
        torch.manual_seed(0)
        module = MAEPretrainModule(
            MaskedAutoencoderHiera(input_size=(64, 64), **TINY),
            optimizer={"lr": 0.0, "warmup_steps": 0},
            pictures={"every_n_steps": 0},
        )
        probes = OnlineProbes(num_classes=2, k=3, lr=3e-2)
        fit = trainer(tmp_path / name, [probes], max_epochs=4)
        fit.fit(
            module,
            DataLoader(dataset(16, 0), batch_size=4, shuffle=True),
            DataLoader(dataset(16, 1), batch_size=8),
        )
        results[name] = {key: float(fit.callback_metrics[f"probe/{key}_top1"]) for key in ("linear", "knn")}
    assert results["blobs"] == {"linear": 1.0, "knn": 1.0}
    assert results["shuffled"]["knn"] <= 0.75 and results["shuffled"]["linear"] <= 0.75


def test_bad_arguments_fail_with_one_line():
    with pytest.raises(ValueError, match="every_n_steps"):
        OnlineProbes(every_n_steps=0)


def test_probe_curve_script_draws_the_logged_curves(tmp_path):
    """``python benchmarks/plot_probe_curve.py RUN --out PNG`` (the README's command) on a TensorBoard log."""
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "run" / "version_0"))
    for step, (knn, linear) in zip((100, 200, 300), ((0.2, 0.25), (0.35, 0.4), (0.5, 0.55))):
        writer.add_scalar("probe/knn_top1", knn, step)
        writer.add_scalar("probe/linear_top1", linear, step)
    writer.close()
    script = Path(__file__).parents[1] / "benchmarks" / "plot_probe_curve.py"
    out = tmp_path / "curve.png"
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "probe/knn_top1 100:0.200 200:0.350 300:0.500" in result.stdout
    with Image.open(out) as image:
        assert image.size == (640, 400)
        pixels = set(image.convert("RGB").getdata())
    assert (31, 119, 180) in pixels and (214, 39, 40) in pixels  # both curves drawn
    empty = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "nothing")], capture_output=True, text=True, check=False
    )
    assert empty.returncode != 0 and "no TensorBoard event files" in empty.stderr
