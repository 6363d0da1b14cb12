"""Bad samples never stop a run: truncated JPEGs, corrupt MP4s, empty or garbage WAVs, missing files and
entries, clips shorter than the window, and shards that cannot be read are skipped, counted per reason
(exactly) and logged; above ``max_skip_fraction`` the run stops with a clear error."""

from __future__ import annotations

import io
import json
import tarfile
import warnings

import lightning as L
import numpy as np
import pytest
import soundfile
import torch
import webdataset as wds
from lightning.pytorch.loggers import Logger
from unveil.datasets import (
    AudioDataModule,
    ImageDataModule,
    SkipPolicy,
    VideoDataModule,
    image_eval_transform,
    make_audio_folder,
    make_image_folder,
    make_video_folder,
)
from unveil.datasets.shards import (
    EncodeOptions,
    ImageShardDecoder,
    ShardDataset,
    ShardLoader,
    make_shards,
    read_index,
)
from unveil.datasets.skips import SkipCounter, SkipCounterCallback, SkipFractionExceeded
from unveil.datasets.synth import render_video, write_mp4

NO_VERIFY = EncodeOptions(verify=False)  # copy the files as they are: the bad ones go into the shards


class MemoryLogger(Logger):
    """Keeps what the callbacks log."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, float] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.update(metrics)


class CountingModule(L.LightningModule):
    """Consumes batches of any modality and counts the samples it trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.samples = 0

    def training_step(self, batch, batch_idx):
        x = next(batch[key] for key in ("image", "video", "fbank") if key in batch)
        self.samples += x.shape[0]
        return (self.weight * x.float().mean()) ** 2 + self.weight**2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(
    data: L.LightningDataModule, **callback_args
) -> tuple[SkipCounterCallback, MemoryLogger, CountingModule]:
    callback, logger, model = SkipCounterCallback(**callback_args), MemoryLogger(), CountingModule()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few workers, IterableDataset lengths: not what is tested here
        trainer.fit(model, datamodule=data)
    return callback, logger, model


def expect_logged(callback, logger, expected: dict[str, int], delivered: int) -> None:
    assert callback.totals == expected
    assert callback.delivered == delivered
    logged = {
        key.split("/")[-1]: value for key, value in logger.metrics.items() if key.startswith("data/skipped/")
    }
    assert logged == {reason: float(count) for reason, count in expected.items()}
    lost = sum(expected.values())
    assert logger.metrics["data/skip_fraction"] == pytest.approx(lost / (lost + delivered))


# ------------------------------------------------------------------------------------- 5 % bad samples


def test_bad_images_in_shards_are_counted_exactly(tmp_path):
    root = make_image_folder(tmp_path / "images", 3, 20, 0, size=32, progress=False)
    files = sorted((root / "train").rglob("*.JPEG"))
    files[0].unlink()  # 59 files; the 60th sample is a shard entry without its image (below)
    files[7].write_bytes(files[7].read_bytes()[: files[7].stat().st_size // 2])  # truncated JPEG
    files[33].write_bytes(b"not an image at all" * 40)  # garbage: PIL cannot identify it
    index = make_shards("images", tmp_path / "shards", root, max_count=16, options=NO_VERIFY, progress=False)
    extra = tmp_path / "shards" / "extra-000000.tar"
    with wds.TarWriter(str(extra)) as writer:  # a sample whose image entry is missing
        writer.write(
            {"__key__": "lost", "cls": b"0", "json": json.dumps({"key": "circle/lost.JPEG"}).encode()}
        )

    data = ImageDataModule(
        shards=[str(index), str(extra)], input_size=32, batch_size=4, val_split=None, loader={"num_workers": 1}
    )
    callback, logger, model = fit(data, every_n_batches=3)
    expect_logged(callback, logger, {"truncated": 1, "unidentified": 1, "missing": 1}, delivered=57)
    assert model.samples == 56  # 57 decoded, the last incomplete batch dropped


def test_bad_videos_in_shards_are_counted_exactly(tmp_path):
    root = make_video_folder(tmp_path / "videos", 2, 20, 0, num_frames=16, fps=8, size=32, progress=False)
    files = sorted((root / "train").rglob("*.mp4"))
    files[3].write_bytes(files[3].read_bytes()[:2000])  # corrupt MP4 (cut before its index)
    write_mp4(files[25], list(render_video("square", np.random.default_rng(0), 32, 4)), 8)  # 4 frames only
    index = make_shards("videos", tmp_path / "shards", root, max_count=10, options=NO_VERIFY, progress=False)

    data = VideoDataModule(
        shards=str(index),
        input_size=32,
        num_frames=4,
        sampling_rate=3,
        batch_size=2,
        val_split=None,
        require_full_window=True,  # the 4-frame clip is shorter than the 10-frame window
        loader={"num_workers": 0},
    )
    callback, logger, _ = fit(data)
    expect_logged(callback, logger, {"decode_error": 1, "short_clip": 1}, delivered=38)


def test_bad_audio_in_shards_is_counted_exactly(tmp_path):
    root = make_audio_folder(tmp_path / "audio", 2, 20, 0, duration=0.5, progress=False)
    files = sorted((root / "train").rglob("*.wav"))
    empty = io.BytesIO()
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    files[5].write_bytes(empty.getvalue())  # a valid WAV holding no samples
    files[30].write_bytes(b"RIFF" + bytes(range(256)) * 8)  # garbage behind a WAV magic number
    index = make_shards("audio", tmp_path / "shards", root, max_count=10, options=NO_VERIFY, progress=False)
    data = AudioDataModule(
        shards=str(index), target_length=50, fbank={"freqm": 0, "timem": 0}, batch_size=4, val_split=None, loader={"num_workers": 1}
    )
    callback, logger, _ = fit(data)
    expect_logged(callback, logger, {"empty_audio": 1, "decode_error": 1}, delivered=38)


def test_missing_file_in_a_manifest_is_counted(tmp_path):
    root = make_video_folder(tmp_path / "videos", 2, 10, 0, num_frames=8, fps=8, size=32, progress=False)
    lines = (root / "train.csv").read_text().splitlines()
    lines[4] = "train/circle/deleted.mp4,0"  # listed, not on disk: 1 of 20
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    data = VideoDataModule(
        csv_train=str(root / "train.csv"),
        input_size=32,
        num_frames=4,
        sampling_rate=1,
        batch_size=2,
        val_split=None,
        loader={"num_workers": 1},
    )
    callback, logger, _ = fit(data)
    # A map-style dataset returns the next sample in place of a bad one: 20 samples still come out.
    expect_logged(callback, logger, {"missing": 1}, delivered=20)


def test_missing_file_is_reported_when_making_shards(tmp_path):
    root = make_video_folder(tmp_path / "videos", 2, 3, 0, num_frames=8, fps=8, size=32, progress=False)
    csv = tmp_path / "list.csv"
    csv.write_text((root / "train.csv").read_text() + "train/circle/deleted.mp4,0\n")
    index = read_index(make_shards("videos", tmp_path / "shards", csv=csv, root=root, progress=False))
    assert index["num_samples"] == 6 and index["skipped"] == {"missing": 1}
    assert [(s["key"], s["reason"]) for s in index["skipped_samples"]] == [
        ("train/circle/deleted.mp4", "missing")
    ]


def test_skip_counts_travel_with_the_batches_exactly_whatever_the_workers(tmp_path):
    """Each worker's counts reach the training process with its batches (no shared table of worker rows):
    3 workers, bad files spread over all of them, then 3 workers on shards whose last batch is dropped."""
    from unveil.datasets.loading import CountingLoader
    from unveil.datasets.image import ImageFolderDataset

    root = make_image_folder(tmp_path / "images", 2, 12, 0, size=32, progress=False)
    files = sorted((root / "train").rglob("*.JPEG"))
    for index in (2, 9, 15, 22):
        files[index].write_bytes(b"garbage" * 40)
    dataset = ImageFolderDataset(root, "train", image_eval_transform(32))
    loader = CountingLoader(dataset, batch_size=2, num_workers=3)
    batches = list(loader)
    assert all(type(batch) is dict for batch in batches)  # the counts are taken out of the batches
    assert dataset.skip_counter.counts() == {"unidentified": 4} and dataset.skip_counter.delivered == 24

    index = make_shards("images", tmp_path / "shards", root, max_count=4, options=NO_VERIFY, progress=False)
    counter = SkipCounter()
    shards = ShardDataset(index, ImageShardDecoder(image_eval_transform(32)), batch_size=5, skip_counter=counter)
    trained = sum(len(batch["key"]) for batch in ShardLoader(shards, num_workers=3))
    assert counter.counts() == {"unidentified": 4} and counter.delivered == 20  # with the dropped samples
    assert trained <= 20


# ------------------------------------------------------------------------------------ unreadable shards


def test_unreadable_shards_are_reported_not_fatal(tmp_path):
    root = make_image_folder(tmp_path / "images", 2, 10, 0, size=32, progress=False)
    index = make_shards("images", tmp_path / "shards", root, max_count=5, progress=False)  # 4 shards of 5
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file" * 100)
    damaged = tmp_path / "damaged.tar"  # a copy of shard 0 cut inside its third sample's image
    first = tmp_path / "shards" / "train-000000.tar"
    with tarfile.open(first) as tar:
        image = next(m for m in tar.getmembers() if m.name == "000000002.jpg")
    damaged.write_bytes(first.read_bytes()[: image.offset_data + image.size // 2])
    specs = [str(index), str(garbage), str(tmp_path / "missing.tar"), str(damaged)]
    counter = SkipCounter()
    dataset = ShardDataset(
        specs,
        ImageShardDecoder(image_eval_transform(32)),
        batch_size=4,
        drop_last=False,
        skip_counter=counter,
    )
    keys = [key for batch in ShardLoader(dataset, num_workers=2) for key in batch["key"]]
    assert counter.counts() == {"shard_error": 3}  # each broken shard once, the run goes on
    assert len(keys) == 20 + 2 and counter.delivered == 22  # all good shards, and what precedes the damage


# ------------------------------------------------------------------------------------ skip-fraction limit


@pytest.fixture()
def mostly_bad_shards(tmp_path):
    root = make_image_folder(tmp_path / "images", 2, 10, 0, size=32, progress=False)
    for path in sorted((root / "train").rglob("*.JPEG"))[:6]:  # 30 % truncated
        path.write_bytes(path.read_bytes()[:300])
    return make_shards("images", tmp_path / "shards", root, max_count=5, options=NO_VERIFY, progress=False)


def test_run_stops_above_the_skip_fraction(mostly_bad_shards):
    data = ImageDataModule(
        shards=str(mostly_bad_shards),
        input_size=32,
        batch_size=2,
        val_split=None,
        skips=SkipPolicy(max_skip_fraction=0.1),
        loader={"num_workers": 0},
    )
    with pytest.raises(SkipFractionExceeded) as info:
        fit(data)
    message = str(info.value)
    assert (
        "30.0% of the samples" in message and "truncated 6" in message and "max_skip_fraction=0.1" in message
    )

    relaxed = ImageDataModule(
        shards=str(mostly_bad_shards),
        input_size=32,
        batch_size=2,
        val_split=None,
        skips=SkipPolicy(max_skip_fraction=0.5),
        loader={"num_workers": 0},
    )
    callback, _, _ = fit(relaxed)
    assert callback.totals == {"truncated": 6}


def test_skip_fraction_stops_a_plain_dataloader_too(mostly_bad_shards):
    counter = SkipCounter(max_skip_fraction=0.1, min_samples=5)
    dataset = ShardDataset(
        mostly_bad_shards,
        ImageShardDecoder(image_eval_transform(32)),
        batch_size=2,
        shuffle_buffer=0,
        skip_counter=counter,
    )
    with pytest.raises(SkipFractionExceeded, match="max_skip_fraction=0.1"):
        list(ShardLoader(dataset, num_workers=1))  # raised in the worker, re-raised here


def test_skip_log_lists_keys_and_reasons(tmp_path, mostly_bad_shards):
    log = tmp_path / "skips-{rank}.jsonl"
    data = ImageDataModule(
        shards=str(mostly_bad_shards),
        input_size=32,
        batch_size=2,
        val_split=None,
        skips=SkipPolicy(max_skip_fraction=None, skip_log=str(log)),
        loader={"num_workers": 1},
    )
    fit(data)
    records = [json.loads(line) for line in (tmp_path / "skips-0.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["reason"] for r in records} == {"truncated"}
    assert all(r["key"].startswith(("circle/", "square/")) and r["rank"] == 0 for r in records)
