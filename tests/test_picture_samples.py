"""The reconstruction pictures take their fixed samples from the validation data of any source: folders (samples
spread over the split), and WebDataset shards of images, video, audio and audio-video (the first samples in the
validation order), read in the main process through the validation loader's own batching."""

from __future__ import annotations

import pytest
import torch
from unveil.datasets import (
    AudioDataModule,
    AudioVideoDataModule,
    ImageDataModule,
    VideoDataModule,
    make_audio_folder,
    make_audio_video_folder,
    make_image_folder,
    make_video_folder,
)
from unveil.datasets.shards import make_shards
from unveil.pretrain.visualize import validation_samples

COUNT = 3  # samples asked for; the validation batches hold 2, so the samples span two batches


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), 3, 1, 2, size=40, progress=False)


def _shard_module(kind: str, tmp_path_factory) -> tuple[object, tuple[str, ...]]:
    """A DataModule whose validation data are tiny generated shards of ``kind``, and its input keys."""
    out = tmp_path_factory.mktemp(kind)
    common = {"batch_size": 2, "loader": {"num_workers": 2, "val_batch_size": 2}}
    if kind == "images":
        root = make_image_folder(out / "data", 2, 3, 0, size=40, progress=False)
        index = str(make_shards("images", out / "shards", root, split="train", max_count=2, progress=False))
        return ImageDataModule(shards=index, val_shards=index, input_size=32, **common), ("image",)
    if kind == "videos":
        root = make_video_folder(out / "data", 2, 2, 0, num_frames=8, fps=8, size=32, progress=False)
        index = str(make_shards("videos", out / "shards", root, split="train", max_count=2, progress=False))
        module = VideoDataModule(shards=index, val_shards=index, input_size=32, num_frames=4, sampling_rate=1,
                                 **common)
        return module, ("video",)
    if kind == "audio":
        root = make_audio_folder(out / "data", 2, 2, 0, duration=1.0, progress=False)
        index = str(make_shards("audio", out / "shards", csv=root / "train_audio.csv",
                                class_index=root / "class_labels_indices.csv", max_count=2, progress=False))
        return AudioDataModule(shards=index, val_shards=index, target_length=96, **common), ("fbank",)
    root = make_audio_video_folder(out / "data", 2, 2, 0, duration=1.0, fps=4, size=32, progress=False)
    index = str(make_shards("audio-video", out / "shards", root, split="train", max_count=2, progress=False))
    module = AudioVideoDataModule(shards=index, val_shards=index, duration=1.0, video_fps=4, input_size=32,
                                  **common)
    return module, ("fbank", "video")


@pytest.mark.parametrize("kind", ["images", "videos", "audio", "audio-video"])
def test_shard_sources_give_their_first_validation_samples(kind, tmp_path_factory):
    module, keys = _shard_module(kind, tmp_path_factory)
    samples = validation_samples(module, COUNT, lambda batch: {key: batch[key] for key in keys})
    assert samples is not None and sorted(samples) == sorted(keys)
    # the same samples, in the same order, as the validation loader gives (shard order is fixed for validation)
    loader = iter(module.val_dataloader())
    first, second = next(loader), next(loader)
    for key in keys:
        expected = torch.cat([first[key], second[key]])[:COUNT]
        assert samples[key].shape[0] == COUNT
        torch.testing.assert_close(samples[key], expected, rtol=0, atol=0)
    # asking for more than there is gives everything there is
    everything = validation_samples(module, 100, lambda batch: {key: batch[key] for key in keys})
    assert everything[keys[0]].shape[0] == sum(b[keys[0]].shape[0] for b in module.val_dataloader())


def test_folder_source_gives_samples_spread_over_the_split(images):
    module = ImageDataModule(root=str(images), input_size=32, batch_size=2, loader={"num_workers": 0})
    samples = validation_samples(module, COUNT, lambda batch: {"image": batch["image"], "label": batch["label"]})
    # 6 validation images, 2 per class in class order: indices 0, 2 (2.5 rounds to even) and 5, one per class
    module.setup()
    dataset = module.val_set
    assert len(dataset) == 6
    expected = torch.stack([dataset[i]["image"] for i in (0, 2, 5)])
    torch.testing.assert_close(samples["image"], expected, rtol=0, atol=0)
    assert samples["label"].tolist() == [0, 1, 2]


def test_no_validation_data_gives_none(images):
    module = ImageDataModule(root=str(images), input_size=32, batch_size=2, val_split=None, loader={"num_workers": 0})
    assert validation_samples(module, COUNT, lambda batch: {"image": batch["image"]}) is None
    assert validation_samples(None, COUNT, lambda batch: batch) is None
