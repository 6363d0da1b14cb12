"""Image and video datasets, clip sampling, augmentation, repeated sampling and the DataModules."""

from __future__ import annotations

import logging
import shutil

import decord
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import tv_tensors
from unveil.datasets import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ImageDataModule,
    ImageFolderDataset,
    VideoDataModule,
    VideoDataset,
    clip_indices,
    image_eval_transform,
    mae_image_transform,
    mae_video_transform,
    make_image_folder,
    make_video_folder,
    read_video_csv,
    repeated_collate,
)

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
VIDEO_FRAMES, VIDEO_FPS = 24, 8


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return make_image_folder(
        tmp_path_factory.mktemp("images"),
        num_classes=3,
        train_per_class=4,
        val_per_class=2,
        size=48,
        progress=False,
    )


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    return make_video_folder(
        tmp_path_factory.mktemp("videos"),
        num_classes=2,
        train_per_class=3,
        val_per_class=1,
        num_frames=VIDEO_FRAMES,
        fps=VIDEO_FPS,
        size=64,
        progress=False,
    )


def _reader(path):
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


# ------------------------------------------------------------------------------------------------ images


def test_image_dataset_samples(image_root):
    dataset = ImageFolderDataset(image_root, "train", mae_image_transform(32))
    assert len(dataset) == 12 and dataset.classes == ["circle", "square", "triangle"]
    for index in (0, 5, 11):
        sample = dataset[index]
        assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
        assert type(sample["image"]) is torch.Tensor  # no tv_tensors subclass leaks into batches
        assert sample["label"].dtype == torch.int64 and sample["label"].ndim == 0
        class_name = sample["key"].split("/")[0]
        assert dataset.classes.index(class_name) == sample["label"].item()
        assert (image_root / "train" / sample["key"]).is_file()


def test_image_normalisation_matches_closed_form(image_root):
    """With no resize or crop (input 48, crop_pct 1), the sample is exactly (pixels / 255 - mean) / std."""
    dataset = ImageFolderDataset(image_root, "val", image_eval_transform(48, crop_pct=1.0))
    sample = dataset[1]
    with Image.open(image_root / "val" / sample["key"]) as image:
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(sample["image"], (pixels - MEAN) / STD, atol=1e-5, rtol=0)


def test_mae_image_transform_is_random_and_crops_by_scale():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    transform = mae_image_transform(32, crop_scale=(0.2, 0.3))
    a, b = transform(image), transform(image)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    # hflip=1 and a crop of the whole image: exactly the mirror of the unflipped full-image resize.
    full = mae_image_transform(32, crop_scale=(1.0, 1.0), hflip=0.0)(image)
    mirrored = mae_image_transform(32, crop_scale=(1.0, 1.0), hflip=1.0)(image)
    torch.testing.assert_close(mirrored, full.flip(-1))


def _copy_images(image_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(image_root / "train", root / "train")
    return root


def test_truncated_jpeg_is_skipped_and_counted(image_root, tmp_path, caplog):
    root = _copy_images(image_root, tmp_path)
    dataset = ImageFolderDataset(root, "train", image_eval_transform(32))
    bad_path = dataset.samples[4][0]
    data = bad_path.read_bytes()
    bad_path.write_bytes(data[: len(data) // 2])
    (dataset.samples[7][0]).write_bytes(b"not an image at all")
    with caplog.at_level(logging.WARNING, logger="unveil.datasets"):
        sample = dataset[4]
        dataset[7]
    assert sample["key"] == dataset.samples[5][0].relative_to(root / "train").as_posix()  # the next one
    assert dataset.skipped == {"truncated": 1, "unidentified": 1}
    assert str(bad_path) in caplog.text
    # Good samples are untouched by the counting.
    dataset[0]
    assert sum(dataset.skipped.values()) == 2


def test_all_bad_files_raise_after_retries(tmp_path):
    root = make_image_folder(
        tmp_path, num_classes=1, train_per_class=3, val_per_class=0, size=32, progress=False
    )
    for path in (root / "train" / "circle").iterdir():
        path.write_bytes(b"")
    dataset = ImageFolderDataset(root, "train", max_retries=2)
    with pytest.raises(RuntimeError, match="3 consecutive samples"):
        dataset[0]
    assert sum(dataset.skipped.values()) == 3


def test_image_dataset_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        ImageFolderDataset(tmp_path, "train")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no .* files"):
        ImageFolderDataset(tmp_path, "train")


# ------------------------------------------------------------------------------------------ clip indices


def test_clip_indices_training_windows():
    num_video_frames, num_frames, rate = 100, 8, 4
    span = (num_frames - 1) * rate + 1
    starts = set()
    for _ in range(400):
        indices = clip_indices(num_video_frames, num_frames, rate, train=True)
        assert indices.dtype == torch.int64 and indices.shape == (num_frames,)
        assert (indices.diff() == rate).all()
        assert indices[0] >= 0 and indices[-1] < num_video_frames
        starts.add(int(indices[0]))
    # Uniform over every position that fits: both extremes are reached, nothing beyond.
    assert min(starts) == 0 and max(starts) == num_video_frames - span
    assert len(starts) > 0.8 * (num_video_frames - span + 1)


def test_clip_indices_eval_is_centred():
    indices = clip_indices(100, 8, 4, train=False)
    span = 7 * 4 + 1
    assert indices[0] == (100 - span) // 2 and (indices.diff() == 4).all()
    assert torch.equal(indices, clip_indices(100, 8, 4, train=False))
    # Centred inside a segment [start, end).
    segment = clip_indices(100, 4, 2, train=False, start_frame=40, end_frame=60)
    assert segment.tolist() == [46, 48, 50, 52]


def test_clip_indices_short_video_repeats_last_frame():
    assert clip_indices(10, 4, 4, train=True).tolist() == [0, 4, 8, 9]
    assert clip_indices(10, 4, 4, train=False).tolist() == [0, 4, 8, 9]
    assert clip_indices(3, 4, 1).tolist() == [0, 1, 2, 2]
    assert clip_indices(100, 3, 5, start_frame=90).max() <= 99
    for bad in ({"num_frames": 0}, {"sampling_rate": 0}):
        with pytest.raises(ValueError):
            clip_indices(10, **{"num_frames": 4, "sampling_rate": 1, **bad})


# -------------------------------------------------------------------------------------- video augmentation


def test_video_transform_applies_one_crop_to_all_frames():
    frame = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 40, 56), dtype=np.uint8))
    video = tv_tensors.Video(frame.expand(6, 3, 40, 56).clone())  # identical frames, textured
    transform = mae_video_transform(24, crop_scale=(0.3, 0.5))
    outputs = [transform(video) for _ in range(3)]
    for out in outputs:
        assert out.shape == (6, 3, 24, 24)
        for t in range(1, 6):
            torch.testing.assert_close(out[t], out[0], atol=0, rtol=0)
    assert not torch.equal(outputs[0], outputs[1])  # yet a new crop each call


def test_video_dataset_sample_layout(video_root):
    dataset = VideoDataset(video_root, "train", num_frames=4, sampling_rate=2, input_size=32)
    assert len(dataset) == 6 and dataset.classes == ["circle", "square"] and dataset.num_classes == 2
    sample = dataset[3]
    assert sample["video"].shape == (3, 4, 32, 32) and sample["video"].dtype == torch.float32
    assert type(sample["video"]) is torch.Tensor
    assert sample["label"].dtype == torch.int64 and sample["label"].item() == 1
    assert sample["key"] == "square/square_00000.mp4"
    assert -3 < sample["video"].mean() < 3 and sample["video"].std() > 0.1


def test_video_eval_decodes_centred_clip_and_normalises(video_root):
    """Eval with input_size = frame size: the sample is exactly the normalised centred frames."""
    dataset = VideoDataset(video_root, "val", num_frames=4, sampling_rate=3, train=False, input_size=64)
    sample = dataset[0]
    span = 3 * 3 + 1
    start = (VIDEO_FRAMES - span) // 2
    frames = (
        _reader(video_root / "val" / sample["key"]).get_batch(list(range(start, start + span, 3))).asnumpy()
    )
    expected = (torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255 - MEAN[:, None]) / STD[:, None]
    torch.testing.assert_close(sample["video"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(dataset[0]["video"], sample["video"])  # eval is deterministic


def test_repeated_sampling_decodes_independent_clips(video_root):
    dataset = VideoDataset(
        video_root, "train", num_frames=4, sampling_rate=2, input_size=32, repeated_sampling=3
    )
    torch.manual_seed(5)
    clips = dataset._decode(2)
    torch.manual_seed(5)
    expected_indices = [clip_indices(VIDEO_FRAMES, 4, 2, train=True) for _ in range(3)]
    reader = _reader(dataset.records[2].path)
    assert clips.shape == (3, 4, 64, 64, 3)
    for clip, indices in zip(clips, expected_indices):
        np.testing.assert_array_equal(clip.numpy(), reader.get_batch(indices.tolist()).asnumpy())
    sample = dataset[2]
    assert sample["video"].shape == (3, 3, 4, 32, 32)
    assert not torch.equal(sample["video"][0], sample["video"][1])  # own window and crop per clip


def test_repeated_collate_flattens_repeats(video_root):
    dataset = VideoDataset(
        video_root, "train", num_frames=2, sampling_rate=2, input_size=16, repeated_sampling=2
    )
    samples = [dataset[0], dataset[4]]
    batch = repeated_collate(samples)
    assert batch["video"].shape == (4, 3, 2, 16, 16)
    assert batch["label"].tolist() == [0, 0, 1, 1]
    assert batch["key"] == [samples[0]["key"]] * 2 + [samples[1]["key"]] * 2
    for b in range(2):
        for r in range(2):
            assert torch.equal(batch["video"][b * 2 + r], samples[b]["video"][r])
    # Without repetition it is plain default_collate.
    single = [{"video": torch.zeros(3, 2, 4, 4), "label": torch.tensor(1), "key": "a"}] * 3
    plain, reference = repeated_collate(single), default_collate(single)
    assert plain["video"].shape == (3, 3, 2, 4, 4) and plain["key"] == reference["key"]


def test_video_csv_manifest(video_root, tmp_path):
    manifest = tmp_path / "m.csv"
    absolute = video_root / "train" / "square" / "square_00001.mp4"
    manifest.write_text(f"# comment\n{absolute},1\n{absolute} 1\n{absolute},1,1.0,2.5\n\n")
    records = read_video_csv(manifest)
    assert [r.label for r in records] == [1, 1, 1] and records[2].start == 1.0 and records[2].end == 2.5
    dataset = VideoDataset(csv=manifest, num_frames=4, sampling_rate=2, train=False, input_size=32)
    assert dataset.num_classes == 2 and dataset.classes is None
    # The segment [1.0 s, 2.5 s) at 8 fps is frames [8, 20): span 7, centred start 8 + (12 - 7) // 2 = 10.
    clips = dataset._decode(2)
    np.testing.assert_array_equal(clips[0].numpy(), _reader(absolute).get_batch([10, 12, 14, 16]).asnumpy())
    # Relative paths resolve against the CSV's folder, or against root when given.
    relative = read_video_csv(video_root / "train.csv")
    assert all(r.path.is_file() for r in relative) and relative[0].key.startswith("train/")
    assert read_video_csv(video_root / "train.csv", root=tmp_path)[0].path.parent.parent.parent == tmp_path


@pytest.mark.parametrize(
    "line, message",
    [("a.mp4", "expected 2 or 4 fields"), ("a.mp4,cat", "invalid literal"), ("a.mp4,1,3,2", "start < end")],
)
def test_video_csv_bad_lines_name_the_line(tmp_path, line, message):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(f"ok.mp4,0\n{line}\n")
    with pytest.raises(ValueError, match=f"bad.csv:2: .*{message}"):
        read_video_csv(manifest)


def test_broken_video_is_skipped(video_root, tmp_path, caplog):
    root = tmp_path / "v"
    shutil.copytree(video_root / "val", root / "val")
    broken = root / "val" / "circle" / "circle_00000.mp4"
    broken.write_bytes(b"\x00" * 64)
    dataset = VideoDataset(root, "val", num_frames=2, sampling_rate=1, train=False, input_size=16)
    with caplog.at_level(logging.WARNING, logger="unveil.datasets"):
        sample = dataset[0]
    assert sample["key"] == "square/square_00000.mp4"
    assert sum(dataset.skipped.values()) == 1 and str(broken) in caplog.text


# ------------------------------------------------------------------------------------------- DataModules


def test_image_datamodule_batches(image_root):
    dm = ImageDataModule(str(image_root), input_size=32, batch_size=5, loader={"num_workers": 0})
    assert dm.num_classes == 3
    loader = dm.train_dataloader()
    assert len(loader) == 2  # 12 images, drop_last
    batch = next(iter(loader))
    assert batch["image"].shape == (5, 3, 32, 32) and batch["label"].shape == (5,) and len(batch["key"]) == 5
    val = list(dm.val_dataloader())
    assert [b["image"].shape[0] for b in val] == [5, 1]  # 6 images, nothing dropped
    assert torch.equal(val[0]["image"], next(iter(dm.val_dataloader()))["image"])  # not shuffled
    workers = ImageDataModule(str(image_root), batch_size=2, loader={"num_workers": 2}).train_dataloader()
    assert workers.persistent_workers and workers.num_workers == 2


def test_video_datamodule_repeated_batches(video_root):
    dm = VideoDataModule(
        str(video_root),
        input_size=32,
        num_frames=4,
        sampling_rate=2,
        repeated_sampling=2,
        batch_size=2,
        loader={"num_workers": 0},
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 3, 4, 32, 32)
    assert batch["label"][0] == batch["label"][1] and batch["key"][0] == batch["key"][1]
    val = next(iter(dm.val_dataloader()))
    assert val["video"].shape == (2, 3, 4, 32, 32)  # one centred clip per video
    manifest = VideoDataModule(
        csv_train=str(video_root / "train.csv"),
        csv_val=str(video_root / "val.csv"),
        input_size=32,
        num_frames=4,
        batch_size=3,
        loader={"num_workers": 0},
    )
    assert manifest.num_classes == 2 and len(manifest.train_dataloader()) == 2
    assert next(iter(manifest.val_dataloader()))["key"][0].startswith("val/")


def test_datamodule_errors_are_one_line_and_name_the_argument(image_root, video_root, tmp_path):
    missing = tmp_path / "nowhere"
    cases = [
        (
            lambda: ImageDataModule(str(missing)),
            FileNotFoundError,
            f"ImageDataModule.root: '{missing}' does not exist (run 'unveil synth images --out {missing}'",
        ),
        (
            lambda: ImageDataModule(str(image_root), val_split="test"),
            FileNotFoundError,
            "ImageDataModule.val_split: ",
        ),
        (
            lambda: ImageDataModule(str(image_root), crop_scale=(0.8, 0.2)),
            ValueError,
            "ImageDataModule.crop_scale must be",
        ),
        (lambda: ImageDataModule(str(image_root), batch_size=0), ValueError, "ImageDataModule.batch_size"),
        (
            lambda: VideoDataModule(str(missing)),
            FileNotFoundError,
            f"VideoDataModule.root: '{missing}' does not exist (run 'unveil synth videos",
        ),
        (
            lambda: VideoDataModule(csv_train=str(missing / "train.csv")),
            FileNotFoundError,
            "VideoDataModule.csv_train: ",
        ),
        (lambda: VideoDataModule(), ValueError, "set root (folder layout) or csv_train (manifest)"),
        (
            lambda: VideoDataModule(str(video_root), repeated_sampling=0),
            ValueError,
            "VideoDataModule.repeated_sampling must be >= 1",
        ),
    ]
    for build, error, message in cases:
        with pytest.raises(error) as info:
            build()
        text = str(info.value)
        assert "\n" not in text
        assert message in text, text
    # No validation split is a valid choice.
    assert ImageDataModule(str(image_root), val_split=None, loader={"num_workers": 0}).val_dataloader() == []


def test_datamodule_builds_from_yaml(image_root, video_root):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(ImageDataModule, "image")
    parser.add_class_arguments(VideoDataModule, "video")
    config = parser.parse_string(
        f"image:\n  root: {image_root}\n  input_size: 32\n  crop_scale: [0.3, 0.9]\n  val_split: null\n"
        f"video:\n  root: {video_root}\n  repeated_sampling: 4\n  loader: {{num_workers: 0}}\n"
    )
    built = parser.instantiate_classes(config)
    assert isinstance(built.image, ImageDataModule) and built.image.crop_scale == (0.3, 0.9)
    assert built.image.val_split is None and built.video.repeated_sampling == 4
    assert built.image.hparams["input_size"] == 32


def test_datamodule_drives_a_lightning_fit(image_root):
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["image"].shape)
            return self.layer(batch["image"].mean(dim=(2, 3))).mean()

        def validation_step(self, batch, batch_idx):
            raise AssertionError("val_split=None must not run validation")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Probe()
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        model,
        datamodule=ImageDataModule(
            str(image_root), input_size=16, batch_size=4, val_split=None, loader={"num_workers": 0}
        ),
    )
    assert model.seen == [torch.Size([4, 3, 16, 16])] * 2


def test_package_exports_and_light_synth_import():
    import subprocess
    import sys

    import unveil.datasets as package

    assert sorted(package.__all__) == sorted(package._EXPORTS)
    assert all(getattr(package, name) is not None for name in package.__all__)
    code = "import sys, unveil.datasets.synth; print('torch' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]  # the generator CLI stays fast to start
