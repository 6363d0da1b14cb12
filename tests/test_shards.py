"""WebDataset shards: ``make_shards`` (limits, index, resume, re-encoding), reading (round trip against the
folder datasets, deterministic order, worker and rank splitting, fixed-length epochs), the DataModules'
``shards:`` switch and the ``unveil shards`` command."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from unveil.datasets import (
    ImageDataModule,
    ImageFolderDataset,
    ShardOptions,
    VideoDataModule,
    VideoDataset,
    image_eval_transform,
    make_image_folder,
    make_video_folder,
    video_eval_transform,
)
from unveil.datasets import shards as shards_module
from unveil.datasets.shards import (
    EncodeOptions,
    ImageShardDecoder,
    ShardDataset,
    ShardLoader,
    VideoShardDecoder,
    make_shards,
    read_index,
    resolve_shards,
)
from unveil.launch.shards import main as shards_main
from unveil.launch.shards import parse_size

NUM_CLASSES, PER_CLASS = 3, 8  # 24 images
VIDEO_FRAMES, VIDEO_FPS = 24, 8


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return make_image_folder(
        tmp_path_factory.mktemp("images"), NUM_CLASSES, PER_CLASS, val_per_class=0, size=48, progress=False
    )


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    return make_video_folder(
        tmp_path_factory.mktemp("videos"),
        2,
        3,
        0,
        num_frames=VIDEO_FRAMES,
        fps=VIDEO_FPS,
        size=64,
        progress=False,
    )


@pytest.fixture(scope="module")
def image_index(image_root, tmp_path_factory):
    """24 images in shards of 5: [5, 5, 5, 5, 4]."""
    return make_shards(
        "images", tmp_path_factory.mktemp("image-shards"), image_root, max_count=5, progress=False
    )


def _keys(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


def _image_dataset(index, **kwargs) -> ShardDataset:
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("drop_last", False)
    return ShardDataset(index, ImageShardDecoder(image_eval_transform(32)), **kwargs)


# ------------------------------------------------------------------------------------------------ writer


def test_count_limit_and_index(image_index, image_root):
    index = read_index(image_index)
    assert index["complete"] and index["kind"] == "images"
    assert [shard["samples"] for shard in index["shards"]] == [5, 5, 5, 5, 4]
    assert [shard["name"] for shard in index["shards"]] == [f"train-{i:06d}.tar" for i in range(5)]
    assert index["num_samples"] == 24 and index["classes"] == ["circle", "square", "triangle"]
    keys_in_tars = []
    for shard in index["shards"]:
        path = image_index.parent / shard["name"]
        assert path.stat().st_size == shard["bytes"]
        with tarfile.open(path) as tar:
            names = tar.getnames()
        assert len(names) == 3 * shard["samples"]  # jpg + cls + json per sample
        keys_in_tars += sorted({name.split(".")[0] for name in names})
    assert keys_in_tars == [f"{i:09d}" for i in range(24)]  # source order, split in order
    shard_set = resolve_shards(image_index)
    assert shard_set.sizes == [5, 5, 5, 5, 4] and shard_set.num_samples == 24


def test_size_limit(image_root, tmp_path):
    one = max(path.stat().st_size for path in (image_root / "train").rglob("*.JPEG"))
    max_size = 20 * 1024 + 3 * (one + 3 * 512)  # room for about 3 samples, with the tar padding
    index = read_index(make_shards("images", tmp_path, image_root, max_size=max_size, progress=False))
    assert len(index["shards"]) >= 5 and index["num_samples"] == 24
    for shard in index["shards"]:
        assert (tmp_path / shard["name"]).stat().st_size <= max_size


def test_resume_skips_finished_shards(image_root, image_index, tmp_path, monkeypatch):
    calls = []
    encode = shards_module._ENCODERS["images"]

    def interrupted(item, options):
        calls.append(item.key)
        if len(calls) == 13:
            raise KeyboardInterrupt  # a crash while writing the third shard
        return encode(item, options)

    monkeypatch.setitem(shards_module._ENCODERS, "images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_shards("images", tmp_path, image_root, max_count=5, progress=False)
    index = read_index(tmp_path / "train.json")
    assert not index["complete"] and [s["name"] for s in index["shards"]] == [
        "train-000000.tar",
        "train-000001.tar",
    ]
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "train-000002.tar").exists()
    finished = {
        name: (tmp_path / name).stat().st_mtime_ns for name in ("train-000000.tar", "train-000001.tar")
    }

    calls.clear()
    monkeypatch.setitem(
        shards_module._ENCODERS, "images", lambda item, options: calls.append(1) or encode(item, options)
    )
    make_shards("images", tmp_path, image_root, max_count=5, progress=False)
    assert len(calls) == 24 - 10  # only the samples after the finished shards
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in finished} == finished
    fresh = read_index(image_index)
    resumed = read_index(tmp_path / "train.json")
    assert resumed["complete"] and resumed["shards"] == fresh["shards"]
    for shard in fresh["shards"]:  # byte-identical to an uninterrupted run
        assert (tmp_path / shard["name"]).read_bytes() == (image_index.parent / shard["name"]).read_bytes()

    calls.clear()
    make_shards("images", tmp_path, image_root, max_count=5, progress=False)
    assert calls == []  # a finished set is left alone
    with pytest.raises(ValueError, match="other sources or options"):
        make_shards("images", tmp_path, image_root, max_count=6, progress=False)


def test_parallel_writing_gives_the_same_shards(image_root, image_index, tmp_path):
    index = make_shards("images", tmp_path, image_root, max_count=5, workers=2, progress=False)
    for shard in read_index(index)["shards"]:
        assert (tmp_path / shard["name"]).read_bytes() == (image_index.parent / shard["name"]).read_bytes()


def test_reencoding(image_root, video_root, tmp_path):
    index = make_shards(
        "images",
        tmp_path / "i",
        image_root,
        options=EncodeOptions(jpeg_quality=70, max_side=24),
        progress=False,
    )
    with tarfile.open(index.parent / read_index(index)["shards"][0]["name"]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        image = Image.open(io.BytesIO(tar.extractfile(member).read()))
    assert image.format == "JPEG" and image.size == (24, 24)

    index = make_shards(
        "videos", tmp_path / "v", video_root, options=EncodeOptions(short_side=32), progress=False
    )
    dataset = ShardDataset(
        index,
        VideoShardDecoder(lambda video: video, num_frames=VIDEO_FRAMES, sampling_rate=1, train=False),
        batch_size=1,
        drop_last=False,
    )
    samples = list(ShardLoader(dataset))
    assert len(samples) == 6
    assert samples[0]["video"].shape == (1, 3, VIDEO_FRAMES, 32, 32)  # uint8 frames, the identity transform
    for shard in read_index(index)["shards"]:
        with tarfile.open(index.parent / shard["name"]) as tar:
            meta = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
        assert all(m["num_frames"] == VIDEO_FRAMES and m["fps"] == VIDEO_FPS for m in meta)


# ---------------------------------------------------------------------------------------------- reading


def test_image_round_trip(image_root, image_index):
    folder = ImageFolderDataset(image_root, "train", image_eval_transform(32))
    expected = {sample["key"]: sample for sample in (folder[i] for i in range(len(folder)))}
    loaded = {}
    for batch in ShardLoader(
        _image_dataset(image_index, batch_size=5, shuffle_buffer=0, shard_shuffle=False)
    ):
        for key, image, label in zip(batch["key"], batch["image"], batch["label"]):
            loaded[key] = (image, label)
    assert loaded.keys() == expected.keys()
    for key, (image, label) in loaded.items():
        assert label == expected[key]["label"]
        assert torch.equal(image, expected[key]["image"])  # the same bytes decode to the same pixels


def test_video_round_trip_with_segments(video_root, tmp_path):
    lines = (video_root / "train.csv").read_text().splitlines()
    segments = [f"{line},0.5,2.25" if i % 2 else line for i, line in enumerate(lines)]  # some with a segment
    csv = tmp_path / "segments.csv"
    csv.write_text("\n".join(segments) + "\n")
    index = make_shards("videos", tmp_path / "shards", csv=csv, root=video_root, max_count=4, progress=False)
    folder = VideoDataset(video_root, csv=csv, num_frames=4, sampling_rate=2, train=False, input_size=32)
    expected = {sample["key"]: sample for sample in (folder[i] for i in range(len(folder)))}
    decoder = VideoShardDecoder(video_eval_transform(32), num_frames=4, sampling_rate=2, train=False)
    dataset = ShardDataset(index, decoder, batch_size=2, drop_last=False, shuffle_buffer=0)
    loaded = {
        key: (video, label)
        for b in ShardLoader(dataset)
        for key, video, label in zip(b["key"], b["video"], b["label"])
    }
    assert loaded.keys() == expected.keys() and len(loaded) == 6
    for key, (video, label) in loaded.items():
        assert label == expected[key]["label"]
        assert torch.equal(video, expected[key]["video"])  # same centred window of the same segment


def test_order_is_deterministic_for_seed_and_epoch(image_index):
    def order(seed, epoch, workers=0):
        dataset = _image_dataset(image_index, shuffle_buffer=10, seed=seed)
        dataset.set_epoch(epoch)
        return _keys(ShardLoader(dataset, num_workers=workers))

    first = order(3, 0)
    assert sorted(first) == sorted(set(first)) and len(first) == 24
    assert order(3, 0) == first
    assert order(3, 1) != first and sorted(order(3, 1)) == sorted(first)
    assert order(4, 0) != first
    assert order(3, 0, workers=2) == order(3, 0, workers=2)

    # The loader advances the epoch itself: pass 1 is epoch 0, pass 2 epoch 1; set_epoch overrides it.
    dataset = _image_dataset(image_index, shuffle_buffer=10, seed=3)
    loader = ShardLoader(dataset, num_workers=1, persistent_workers=True)
    assert _keys(loader) == first and dataset.epoch == 0
    assert _keys(loader) == order(3, 1) and dataset.epoch == 1
    dataset.set_epoch(0)
    assert _keys(loader) == first  # persistent workers see the new epoch too


@pytest.mark.parametrize("workers", [2, 3])
def test_split_by_worker_covers_every_sample_once(image_index, workers):
    loader = ShardLoader(_image_dataset(image_index, shuffle_buffer=4), num_workers=workers)
    keys = _keys(loader)
    assert Counter(keys) == Counter({key: 1 for key in set(keys)}) and len(keys) == 24


def test_split_by_rank_gives_disjoint_samples(image_index, monkeypatch):
    everything = _keys(ShardLoader(_image_dataset(image_index)))
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))  # what webdataset and the loader read outside a process group
        monkeypatch.setenv("WORLD_SIZE", "2")
        dataset = _image_dataset(image_index, seed=1)
        seen.append(_keys(ShardLoader(dataset, num_workers=2)))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(everything)


def test_fixed_length_epochs(image_index):
    """``epoch_samples``: every rank gets exactly len(loader) batches, resampled or repeating its shards."""
    for resampled in (True, False):
        dataset = _image_dataset(
            image_index, batch_size=4, drop_last=True, resampled=resampled, epoch_samples=40
        )
        loader = ShardLoader(dataset, num_workers=2)
        assert len(loader) == 10  # 40 // 4 batches, a multiple of the 2 workers
        batches = list(loader)
        assert len(batches) == 10 and all(len(b["key"]) == 4 for b in batches)
        assert len(list(loader)) == 10
    dataset = _image_dataset(image_index, batch_size=4, resampled=True)  # epoch: the index's 24 samples
    assert len(ShardLoader(dataset, num_workers=0)) == 6
    resampled = _image_dataset(image_index, batch_size=4, resampled=True, seed=5)
    assert _keys(ShardLoader(resampled)) == _keys(
        ShardLoader(_image_dataset(image_index, batch_size=4, resampled=True, seed=5))
    )


def test_length_of_one_pass_bounds_the_batches(image_index):
    dataset = _image_dataset(image_index, batch_size=4, drop_last=True)
    assert len(dataset) == 24 // 4
    assert len(list(ShardLoader(dataset, num_workers=2))) <= len(dataset)
    unknown = _image_dataset(str(image_index.parent / "train-{000000..000004}.tar"))
    assert len(unknown) == 6  # counts found in the index next to the tars
    with pytest.raises(TypeError):
        len(
            _image_dataset(
                [str(p) for p in sorted(image_index.parent.glob("*.tar"))]
                + [str(image_index.parent / "x.tar")]
            )
        )


def test_fewer_shards_than_ranks_is_a_clear_error(image_index, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(ValueError, match="5 shards for 8 ranks"):
        list(ShardLoader(_image_dataset(image_index)))


def test_resolve_shards_forms(image_index):
    folder = image_index.parent
    tars = sorted(str(p) for p in folder.glob("*.tar"))
    assert resolve_shards(folder).urls == tars
    assert resolve_shards(str(folder / "train-{000000..000004}.tar")).urls == tars
    assert resolve_shards([tars[0], str(image_index)]).urls == [tars[0], *tars]
    with pytest.raises(FileNotFoundError):
        resolve_shards(str(folder / "nothing-{0..3}.tar"))


# ---------------------------------------------------------------------------------------- DataModules


def test_datamodules_switch_to_shards_by_configuration(image_index, image_root, video_root, tmp_path):
    data = ImageDataModule(shards=str(image_index), input_size=32, batch_size=4, loader={"num_workers": 0})
    assert data.num_classes == NUM_CLASSES and data.val_dataloader() == []
    loader = data.train_dataloader()
    assert isinstance(loader, ShardLoader) and len(loader) == 6
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].dtype == torch.int64
    folder = ImageDataModule(str(image_root), input_size=32, batch_size=4, val_split=None, loader={"num_workers": 0})
    assert not isinstance(folder.train_dataloader(), ShardLoader)
    with_val = ImageDataModule(
        shards=str(image_index), val_shards=str(image_index), input_size=32, batch_size=4,
        loader={"num_workers": 0})
    assert sum(len(b["key"]) for b in with_val.val_dataloader()) == 24  # whole set, no drop

    video_index = make_shards("videos", tmp_path, video_root, max_count=3, progress=False)
    video = VideoDataModule(
        shards=str(video_index),
        input_size=32,
        num_frames=4,
        sampling_rate=2,
        repeated_sampling=2,
        batch_size=2,
        loader={"num_workers": 0},
    )
    batch = next(iter(video.train_dataloader()))
    assert batch["video"].shape == (4, 3, 4, 32, 32) and video.num_classes == 2
    assert batch["key"][0] == batch["key"][1]  # repeated sampling: two clips per decoded video

    with pytest.raises(FileNotFoundError) as info:
        ImageDataModule(shards=str(tmp_path / "missing.json"))
    assert str(info.value).startswith("ImageDataModule.shards:") and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="ImageDataModule.shard_options.resampled"):
        ImageDataModule(str(image_root), val_split=None, shard_options=ShardOptions(resampled=True))


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_make_and_info(image_root, tmp_path, capsys):
    assert (
        shards_main(
            [
                "make",
                "images",
                "--root",
                str(image_root),
                "--out",
                str(tmp_path),
                "--max-count",
                "10",
                "--quiet",
            ]
        )
        == 0
    )
    assert "24 samples in 3 shards" in capsys.readouterr().out
    assert shards_main(["info", str(tmp_path / "train.json")]) == 0
    assert "3 shards, 24 samples, 3 classes" in capsys.readouterr().out
    assert shards_main(["make", "images", "--root", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert (
        shards_main(["make", "audio", "--root", str(image_root), "--out", str(tmp_path), "--short-side", "8"])
        == 2
    )
    assert parse_size("1GB") == 10**9 and parse_size("512MiB") == 2**29 and parse_size("3e3") == 3000


# ------------------------------------------------------------------------------------- audio, audio-video


def test_audio_and_audio_video_round_trip(tmp_path):
    audio_video = pytest.importorskip("unveil.datasets.audio_video")
    from unveil.datasets.audio import AudioDataset, FbankTransform
    from unveil.datasets.shards import AudioShardDecoder, AudioVideoShardDecoder
    from unveil.datasets.synth import make_audio_video_folder

    root = make_audio_video_folder(tmp_path / "av", 2, 2, 0, duration=1.0, fps=8, size=32, progress=False)
    csv, classes = root / "train_audio.csv", root / "class_labels_indices.csv"

    index = make_shards("audio", tmp_path / "a", csv=csv, class_index=classes, max_count=3, progress=False)
    assert read_index(index)["class_mids"] == ["/synth/circle", "/synth/square"]
    folder = AudioDataset(csv, class_index=classes, train=False, target_length=100)
    expected = {s["key"]: s for s in (folder[i] for i in range(len(folder)))}
    dataset = ShardDataset(index, AudioShardDecoder(FbankTransform(100), 2), batch_size=3, drop_last=False)
    batches = list(ShardLoader(dataset))
    loaded = {k: (f, lab) for b in batches for k, f, lab in zip(b["key"], b["fbank"], b["label"])}
    assert loaded.keys() == expected.keys()
    for key, (fbank, label) in loaded.items():
        assert torch.equal(fbank, expected[key]["fbank"]) and torch.equal(label, expected[key]["label"])

    index = make_shards(
        "audio-video", tmp_path / "v", csv=root / "train_av.csv", class_index=classes, progress=False
    )
    pipeline = audio_video.AudioVideoPipeline(duration=0.5, fps=4, input_size=32, train=False)
    folder = audio_video.AudioVideoDataset(csv=root / "train_av.csv", class_index=classes, pipeline=pipeline)
    expected = {s["key"]: s for s in (folder[i] for i in range(len(folder)))}
    dataset = ShardDataset(index, AudioVideoShardDecoder(pipeline, 2), batch_size=2, drop_last=False)
    loaded = {k: (v, f) for b in ShardLoader(dataset) for k, v, f in zip(b["key"], b["video"], b["fbank"])}
    assert loaded.keys() == expected.keys()
    for key, (video, fbank) in loaded.items():
        assert torch.equal(video, expected[key]["video"]) and torch.equal(fbank, expected[key]["fbank"])

    from unveil.datasets import AudioVideoDataModule

    data = AudioVideoDataModule(
        shards=str(index),
        duration=0.5,
        video_fps=4,
        input_size=32,
        batch_size=2,
        val_split=None,
        loader={"num_workers": 0},
    )
    batch = next(iter(data.train_dataloader()))
    assert batch["video"].shape == (2, 3, 2, 32, 32) and batch["fbank"].shape == (2, 1, 50, 128)
    assert batch["label"].shape == (2, 2) and data.num_classes == 2


def test_plain_dataloader_over_shards_still_batches(image_index):
    # The dataset yields batches; a plain DataLoader(batch_size=None) works, without the epoch bookkeeping.
    batches = list(DataLoader(_image_dataset(image_index), batch_size=None))
    assert sum(len(b["key"]) for b in batches) == 24
