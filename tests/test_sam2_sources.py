"""SAM 2 training sources: SA-1B images (``unveil.datasets.sa1b``), SA-V videos (``unveil.datasets.sav``), the
weighted mix (``unveil.datasets.mixed``) and VOS clip shards (``unveil.datasets.vos_shards``, ``unveil shards
make vos``), on small files written here in the official layouts."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import types
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from unveil.datasets.common import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from unveil.datasets.sav import encode_rle

UNVEIL = str(Path(sys.executable).parent / "unveil")


def _normalised(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> what a source returns without resizing: float [T, 3, H, W] ImageNet-normalised."""
    video = torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (video - mean) / std


@pytest.fixture
def official_loaders(monkeypatch):
    """SAM 2's ``training.dataset.vos_segment_loader`` (the JSON and SA-1B loaders do not use pandas, which
    it imports at the top and this environment lacks)."""
    if "pandas" not in sys.modules:
        try:
            import pandas  # noqa: F401
        except ImportError:
            monkeypatch.setitem(sys.modules, "pandas", types.ModuleType("pandas"))
    monkeypatch.delitem(sys.modules, "training.dataset.vos_segment_loader", raising=False)
    from training.dataset import vos_segment_loader

    return vos_segment_loader


def _box(height: int, width: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[max(top, 0) : max(top + side, 0), max(left, 0) : max(left + side, 0)] = True
    return mask


# ============================================================================================ SA-1B

H1, W1 = 40, 56


def _sa1b_annotation(index: int, mask: np.ndarray, stability: float = 0.95) -> dict:
    ys, xs = np.nonzero(mask)
    bbox = (
        [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)] if len(xs) else [0, 0, 0, 0]
    )
    return {
        "id": index,
        "segmentation": encode_rle(mask),
        "bbox": bbox,
        "area": int(mask.sum()),
        "predicted_iou": 0.9,
        "point_coords": [[float(xs.mean()) if len(xs) else 0.0, float(ys.mean()) if len(ys) else 0.0]],
        "crop_box": [0, 0, W1, H1],
        "stability_score": stability,
    }


def _write_sa1b(root: Path, name: str, masks: list[np.ndarray], rng, stability=None) -> np.ndarray:
    pixels = rng.integers(0, 256, size=(H1, W1, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / f"{name}.jpg", quality=95)
    annotations = [
        _sa1b_annotation(i, mask, 0.95 if stability is None else stability[i]) for i, mask in enumerate(masks)
    ]
    image = {"image_id": int(name.split("_")[1]), "width": W1, "height": H1, "file_name": f"{name}.jpg"}
    (root / f"{name}.json").write_text(json.dumps({"image": image, "annotations": annotations}))
    return pixels


@pytest.fixture
def sa1b(tmp_path) -> tuple[Path, list[np.ndarray]]:
    """sa_1: five masks (one of zero area, one low-stability); sa_2: no annotation; sa_3: garbage json;
    sa_4: truncated jpg; sa_5: no json."""
    root = tmp_path / "sa1b"
    root.mkdir()
    rng = np.random.default_rng(0)
    masks = [
        _box(H1, W1, 2, 3, 10),
        np.zeros((H1, W1), dtype=bool),  # area 0: left out, as SAM 2's loader does
        _box(H1, W1, 20, 30, 12),
        _box(H1, W1, 5, 5, 30),
        _box(H1, W1, 25, 2, 8),
    ]
    _write_sa1b(root, "sa_1", masks, rng, stability=[0.95, 0.95, 0.95, 0.5, 0.95])
    _write_sa1b(root, "sa_2", [], rng)
    _write_sa1b(root, "sa_3", [masks[0]], rng)
    (root / "sa_3.json").write_text('{"image": {"width": 56,')
    _write_sa1b(root, "sa_4", [masks[0]], rng)
    (root / "sa_4.jpg").write_bytes((root / "sa_4.jpg").read_bytes()[:300])
    _write_sa1b(root, "sa_5", [masks[0]], rng)
    (root / "sa_5.json").unlink()
    return root, masks


def test_sa1b_sample_is_a_one_frame_clip_of_the_first_masks(sa1b):
    from unveil.datasets.sa1b import SA1BFolder

    root, masks = sa1b
    dataset = SA1BFolder(root, max_objects=3, train=False)
    assert [path.name for path in dataset.images] == [f"sa_{i}.jpg" for i in range(1, 6)]
    sample = dataset[0]
    assert sample["key"] == "sa_1"
    assert sample["frames"].shape == (1, 3, H1, W1) and sample["frames"].dtype == torch.float32
    assert sample["masks"].shape == (1, 3, H1, W1) and sample["masks"].dtype == torch.bool
    with Image.open(root / "sa_1.jpg") as image:
        pixels = np.asarray(image.convert("RGB"))[None]
    torch.testing.assert_close(sample["frames"], _normalised(pixels), rtol=0, atol=0)
    usable = [masks[0], masks[2], masks[3]]  # the empty mask is left out
    assert np.array_equal(sample["masks"][0].numpy(), np.stack(usable))


def test_sa1b_filters_and_random_choice(sa1b):
    from unveil.datasets.sa1b import SA1BFolder

    root, masks = sa1b
    stable = SA1BFolder(root, max_objects=8, train=False, min_stability_score=0.9)
    assert np.array_equal(stable[0]["masks"][0].numpy(), np.stack([masks[0], masks[2], masks[4]]))
    small = SA1BFolder(root, max_objects=8, train=False, max_area_fraction=0.3)  # the 30x30 box is 40 %
    assert np.array_equal(small[0]["masks"][0].numpy(), np.stack([masks[0], masks[2], masks[4]]))

    dataset = SA1BFolder(root, max_objects=2, train=True, size=32)
    usable = [masks[i] for i in (0, 2, 3, 4)]
    seen = set()
    for seed in range(30):
        random.seed(seed)
        sample = dataset[0]
        assert sample["frames"].shape == (1, 3, 32, 32) and sample["masks"].shape == (1, 2, 32, 32)
        random.seed(seed)
        chosen = tuple(sorted(random.sample(range(4), 2)))
        full = SA1BFolder(root, max_objects=2, train=True)
        random.seed(seed)
        assert np.array_equal(full[0]["masks"][0].numpy(), np.stack([usable[i] for i in chosen]))
        seen.add(chosen)
    assert len(seen) > 3  # a random choice, not always the same masks


def test_sa1b_skips_and_counts_bad_files(sa1b):
    from unveil.datasets.sa1b import SA1BFolder

    root, _ = sa1b
    dataset = SA1BFolder(root, train=False)
    keys = [dataset[index]["key"] for index in range(len(dataset))]
    assert keys == ["sa_1"] * 5  # every bad image falls through to the next good one (wrapping around)
    # sa_2 is met from index 1, sa_3 from 1 and 2, ..., sa_5 from 1 to 4: each retry counts.
    assert dataset.skipped == Counter({"no_annotations": 1, "decode_error": 2, "truncated": 3, "missing": 4})
    counts = dataset.skip_counter.counts()
    assert counts["no_annotations"] == 1 and counts["missing"] == 4


def test_sa1b_masks_match_the_official_loader(sa1b, official_loaders):
    from unveil.datasets.sa1b import SA1BFolder

    root, _ = sa1b
    official = official_loaders.SA1BSegmentLoader(str(root / "sa_1.json")).load(0)
    expected = np.stack([official[key].numpy().astype(bool) for key in sorted(official.keys())])
    ours = SA1BFolder(root, max_objects=10, train=False)[0]["masks"][0].numpy()
    assert np.array_equal(ours, expected)


# ============================================================================================ SA-V

HV, WV, FRAMES = 48, 64, 30  # 30 frames at 24 fps: annotated frames 0, 4, ..., 28 (8 of them)


def _sav_video(rng) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Frames whose brightness encodes their index, and per annotated frame the masks of 3 objects:
    0 always visible, 1 appearing at annotated frame 3, 2 visible only at annotated frame 0."""
    frames = np.zeros((FRAMES, HV, WV, 3), dtype=np.uint8)
    for t in range(FRAMES):
        frames[t] = 8 * t
    masks = []
    for k in range(-(-FRAMES // 4)):
        masks.append(
            [
                _box(HV, WV, 4 + k, 4 + 2 * k, 12),
                _box(HV, WV, 30, 40, 10) if k >= 3 else np.zeros((HV, WV), dtype=bool),
                _box(HV, WV, 20, 20, 8) if k == 0 else np.zeros((HV, WV), dtype=bool),
            ]
        )
    return frames, masks


def _sav_json(video_id: str, masks: list[list[np.ndarray]], frame_count: int) -> dict:
    """The keys of an SA-V ``*_manual.json`` (sav_dataset/README.md), masks as RLEs (empty when absent)."""
    objects = len(masks[0]) if masks else 0
    areas = [[int(frame[o].sum()) for frame in masks] for o in range(objects)]
    visible = [[a for a in per_object if a > 0] for per_object in areas]
    return {
        "video_id": video_id,
        "video_duration": frame_count / 24,
        "video_frame_count": float(frame_count),
        "video_height": float(HV),
        "video_width": float(WV),
        "video_resolution": float(HV * WV),
        "video_environment": "Indoor",
        "video_split": "train",
        "masklet": [[encode_rle(mask) for mask in frame] for frame in masks],
        "masklet_id": list(range(objects)),
        "masklet_size_rel": [float(np.mean(v)) / (HV * WV) if v else 0.0 for v in visible],
        "masklet_size_abs": [float(np.mean(v)) if v else 0.0 for v in visible],
        "masklet_size_bucket": ["small"] * objects,
        "masklet_visibility_changes": [0] * objects,
        "masklet_first_appeared_frame": [
            float(next((k for k, a in enumerate(p) if a > 0), 0)) for p in areas
        ],
        "masklet_frame_count": [len(masks)] * objects,
        "masklet_edited_frame_count": [0] * objects,
        "masklet_type": ["manual"] * objects,
        "masklet_stability_score": [None] * objects,
        "masklet_num": objects,
    }


def _write_mp4(path: Path, frames: np.ndarray, fps: int = 24) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = Fraction(1, fps)
        if stream.name == "libx264":
            stream.options = {"crf": "1", "preset": "ultrafast"}
        for t, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture
def sav(tmp_path) -> tuple[Path, np.ndarray, list]:
    """sav_000001: mp4 + json; sav_000002: a frame folder + json (SAM 2's extracted-frame layout), in a
    sub-folder as the release's tars unpack; bad ones: 3 garbage json, 4 no video, 5 no object anywhere,
    6 too few annotated frames."""
    root = tmp_path / "sav_train"
    (root / "sav_000").mkdir(parents=True)
    rng = np.random.default_rng(1)
    frames, masks = _sav_video(rng)
    _write_mp4(root / "sav_000" / "sav_000001.mp4", frames)
    (root / "sav_000" / "sav_000001_manual.json").write_text(
        json.dumps(_sav_json("sav_000001", masks, FRAMES))
    )
    folder = root / "sav_000" / "sav_000002"
    folder.mkdir()
    for t, pixels in enumerate(frames):
        Image.fromarray(pixels).save(folder / f"{t:05d}.jpg", quality=95)
    (root / "sav_000" / "sav_000002_manual.json").write_text(
        json.dumps(_sav_json("sav_000002", masks, FRAMES))
    )
    (root / "sav_000003_manual.json").write_text('{"masklet": [[{"size"')
    (root / "sav_000004_manual.json").write_text(json.dumps(_sav_json("sav_000004", masks, FRAMES)))
    empty = [[np.zeros((HV, WV), dtype=bool)] for _ in masks]
    _write_mp4(root / "sav_000005.mp4", frames)
    (root / "sav_000005_manual.json").write_text(json.dumps(_sav_json("sav_000005", empty, FRAMES)))
    _write_mp4(root / "sav_000006.mp4", frames[:9])
    (root / "sav_000006_manual.json").write_text(json.dumps(_sav_json("sav_000006", masks[:3], 9)))
    return root, frames, masks


def test_sav_clip_from_mp4_reads_every_fourth_frame(sav):
    from unveil.datasets.sav import SAVFolder

    root, _frames, masks = sav
    dataset = SAVFolder(root, num_frames=4, max_objects=2, train=False)
    assert dataset.videos == [f"sav_00000{i}" for i in range(1, 7)]
    sample = dataset[0]
    assert sample["key"] == "sav_000001"
    assert sample["frames"].shape == (4, 3, HV, WV) and sample["masks"].shape == (4, 2, HV, WV)
    # The first window shows objects 0 and 2 in its first frame.
    expected = np.stack([[masks[k][0], masks[k][2]] for k in range(4)])
    assert np.array_equal(sample["masks"].numpy(), expected)
    # Frame brightness 8 t: annotated frame k is video frame 4 k.
    std, mean = torch.tensor(IMAGENET_DEFAULT_STD), torch.tensor(IMAGENET_DEFAULT_MEAN)
    pixels = (sample["frames"] * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)) * 255
    assert torch.allclose(pixels.mean(dim=(1, 2, 3)), torch.tensor([0.0, 32.0, 64.0, 96.0]), atol=3)


def test_sav_frame_folder_matches_the_official_json_loader(sav, official_loaders):
    from unveil.datasets.sav import SAVFolder

    root, _frames, _masks = sav
    dataset = SAVFolder(root, num_frames=8, max_objects=3, train=False)
    sample = dataset[1]
    assert sample["key"] == "sav_000002"
    assert dataset.media_of(1).is_dir()
    files = [root / "sav_000" / "sav_000002" / f"{4 * k:05d}.jpg" for k in range(8)]
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in files])
    torch.testing.assert_close(sample["frames"], _normalised(pixels), rtol=0, atol=0)
    loader = official_loaders.JSONSegmentLoader(str(root / "sav_000" / "sav_000002_manual.json"), ann_every=4)
    for t in range(8):
        official = loader.load(4 * t)
        for column, object_id in enumerate([0, 2]):  # objects visible in the first frame
            assert np.array_equal(
                sample["masks"][t, column].numpy(), official[object_id].numpy().astype(bool)
            )
    assert sample["masks"].shape[1] == 2


def test_sav_frames_with_a_null_entry_are_not_annotated(sav):
    from unveil.datasets.sav import SAVFolder

    root, _, masks = sav
    annotation = json.loads((root / "sav_000" / "sav_000001_manual.json").read_text())
    annotation["masklet"][1] = None  # SAM 2's loader drops a frame that is null or has a null object
    annotation["masklet"][2][1] = None
    (root / "sav_000" / "sav_000001_manual.json").write_text(json.dumps(annotation))
    sample = SAVFolder(root, num_frames=4, max_objects=3, train=False)[0]
    expected = np.stack([[masks[k][0], masks[k][2]] for k in (0, 3, 4, 5)])
    assert np.array_equal(sample["masks"].numpy(), expected)
    std, mean = torch.tensor(IMAGENET_DEFAULT_STD), torch.tensor(IMAGENET_DEFAULT_MEAN)
    pixels = (sample["frames"] * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)) * 255
    assert torch.allclose(pixels.mean(dim=(1, 2, 3)), torch.tensor([0.0, 96.0, 128.0, 160.0]), atol=3)


def test_sav_json_fps_sets_the_annotation_spacing(sav):
    from unveil.datasets.sav import SAVFolder

    root, _, _ = sav
    annotation = json.loads((root / "sav_000" / "sav_000001_manual.json").read_text())
    annotation["fps"] = 8  # annotated at 8 fps of 24: every 3rd frame
    (root / "sav_000" / "sav_000001_manual.json").write_text(json.dumps(annotation))
    sample = SAVFolder(root, num_frames=4, train=False)[0]
    std, mean = torch.tensor(IMAGENET_DEFAULT_STD), torch.tensor(IMAGENET_DEFAULT_MEAN)
    pixels = (sample["frames"] * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)) * 255
    assert torch.allclose(pixels.mean(dim=(1, 2, 3)), torch.tensor([0.0, 24.0, 48.0, 72.0]), atol=3)


def test_sav_training_clips_start_with_their_objects(sav):
    from unveil.datasets.sav import SAVFolder

    root, _, _ = sav
    dataset = SAVFolder(root, num_frames=3, max_objects=1, train=True, size=32)
    objects = Counter()
    for seed in range(20):
        random.seed(seed)
        sample = dataset[0]
        assert sample["frames"].shape == (3, 3, 32, 32) and sample["masks"].shape == (3, 1, 32, 32)
        assert sample["masks"][0].flatten(1).any(1).all()  # every chosen object shows in the first frame
        objects[int(sample["masks"][0, 0].sum())] += 1
    assert len(objects) > 1  # windows and objects vary


def test_sav_skips_and_counts_bad_videos(sav):
    from unveil.datasets.sav import SAVFolder

    root, _, _ = sav
    dataset = SAVFolder(root, num_frames=4, train=False, max_retries=10)
    assert [dataset[i]["key"] for i in (2, 3, 4, 5)] == ["sav_000001"] * 4
    assert dataset.skipped["decode_error"] == 1
    assert dataset.skipped["missing"] == 2
    assert dataset.skipped["no_annotations"] == 3
    assert dataset.skipped["short_clip"] == 4
    with pytest.raises(FileNotFoundError, match="no .*_manual.json"):
        SAVFolder(root / "sav_000" / "sav_000002")


# ============================================================================================ mixing


def test_mix_sampler_draws_sources_by_weight_and_shares_steps_across_ranks():
    from unveil.datasets.mixed import WeightedMixSampler

    sizes, weights, batch, ranks = [50, 7], [3.0, 1.0], 2, 2
    samplers = [
        WeightedMixSampler(sizes, weights, batch, seed=5, num_replicas=ranks, rank=r, epoch_samples=8000)
        for r in range(ranks)
    ]
    sources, order = samplers[0].schedule(0)
    assert len(sources) == 2000 and len(order) == 8000
    share = (sources == 0).double().mean().item()
    assert abs(share - 0.75) < 0.03, share
    keys = [list(sampler) for sampler in samplers]
    for step in range(len(sources)):
        source = int(sources[step])
        for rank in range(ranks):
            for index, _ in keys[rank][step * batch : (step + 1) * batch]:
                assert (index >= 50) == (source == 1)  # every rank reads the step's source
    seeds = [seed for rank_keys in keys for _, seed in rank_keys]
    assert len(set(seeds)) == len(seeds)  # one augmentation seed per position
    # Inside a source: whole permutations in turn (7 samples: each seen once per 7 draws).
    small = [int(i) - 50 for i in order.tolist() if i >= 50]
    assert all(sorted(small[c : c + 7]) == list(range(7)) for c in range(0, len(small) - 6, 7))
    again = WeightedMixSampler(sizes, weights, batch, seed=5, num_replicas=ranks, rank=1, epoch_samples=8000)
    assert list(again) == keys[1]
    other = WeightedMixSampler(sizes, weights, batch, seed=6, num_replicas=ranks, rank=1, epoch_samples=8000)
    assert list(other) != keys[1]
    again.set_epoch(1)
    assert list(again) != keys[1]


class _Numbers(torch.utils.data.Dataset):
    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        return {"source": self.name, "index": index, "draw": random.random()}


def test_mixed_loader_is_deterministic_and_resumes():
    from unveil.datasets.mixed import MixedLoader

    def loader():
        return MixedLoader(
            [_Numbers("a", 20), _Numbers("b", 5)],
            [1, 1],
            batch_size=2,
            seed=3,
            epoch_samples=40,
            collate_fn=list,
        )

    full = [[(s["source"], s["index"], s["draw"]) for s in batch] for batch in loader()]
    assert len(full) == 20
    assert {source for batch in full for source, _, _ in batch} == {"a", "b"}
    assert all(len({source for source, _, _ in batch}) == 1 for batch in full)  # one source per step
    first = loader()
    iterator = iter(first)
    for _ in range(7):
        next(iterator)
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [[(s["source"], s["index"], s["draw"]) for s in batch] for batch in resumed]
    assert rest == full[7:]
    with_workers = MixedLoader(
        [_Numbers("a", 20), _Numbers("b", 5)],
        [1, 1],
        batch_size=2,
        seed=3,
        epoch_samples=40,
        collate_fn=list,
        num_workers=2,
    )
    assert [[(s["source"], s["index"], s["draw"]) for s in batch] for batch in with_workers] == full


def test_weighted_mix_dataset_ratio_and_shared_skip_counter(sa1b):
    from unveil.datasets.mixed import WeightedMix
    from unveil.datasets.sa1b import SA1BFolder

    mix = WeightedMix([_Numbers("a", 3), _Numbers("b", 100)], [0.2, 0.8], epoch_samples=5000)
    assert len(mix) == 5000
    random.seed(0)
    sources = Counter(mix[i]["source"] for i in range(len(mix)))
    assert abs(sources["a"] / 5000 - 0.2) < 0.02, sources
    with pytest.raises(ValueError, match="weights"):
        WeightedMix([_Numbers("a", 3)], [0.2, 0.8])

    images = SA1BFolder(sa1b[0], train=False)
    mixed = WeightedMix([images, _Numbers("b", 4)], [1, 0])
    assert images.skip_counter is mixed.skip_counter
    random.seed(0)
    mixed[0]
    mixed.transform = "augment"
    assert images.transform == "augment" and mixed.transform == "augment"


# ============================================================================================ shards


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    from unveil.datasets.synth_vos import make_vos_folder

    return make_vos_folder(
        tmp_path_factory.mktemp("davis") / "davis", train_videos=3, val_videos=1, frames=10, size=48
    )


def _raw_samples(index_file: Path) -> list[dict]:
    import webdataset as wds
    from unveil.datasets.shards import resolve_shards

    urls = resolve_shards(index_file).urls
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_vos_shards_give_the_samples_vosfolder_gives(davis, tmp_path):
    from unveil.datasets.shards import read_index
    from unveil.datasets.vos import VOSFolder
    from unveil.datasets.vos_shards import VOSShardDecoder, make_vos_shards, vos_shard_dataset

    index_file = make_vos_shards(davis, tmp_path / "shards", split="train", max_count=2, progress=False)
    index = read_index(index_file)
    assert index["kind"] == "vos" and index["complete"] and index["num_samples"] == 3
    assert [shard["samples"] for shard in index["shards"]] == [2, 1]

    folder = VOSFolder(davis, "train", num_frames=8, max_objects=2, train=False)
    dataset = vos_shard_dataset(index_file, num_frames=8, max_objects=2, train=False, shard_shuffle=False)
    samples = [batch[0] for batch in dataset]
    assert [s["key"] for s in samples] == folder.videos
    for index, sample in enumerate(samples):
        expected = folder[index]
        assert torch.equal(sample["frames"], expected["frames"]) and torch.equal(
            sample["masks"], expected["masks"]
        )

    # Training draws: the same random state gives the same window and objects as VOSFolder.
    raw = _raw_samples(index_file)
    decoder = VOSShardDecoder(num_frames=4, max_objects=1, size=32, train=True)
    folder = VOSFolder(davis, "train", num_frames=4, max_objects=1, size=32, train=True)
    for seed in range(6):
        for index, sample in enumerate(raw):
            random.seed(seed)
            ours = decoder.to_sample(decoder.decode(sample), sample)
            random.seed(seed)
            expected = folder[index]
            assert ours["key"] == expected["key"]
            assert torch.equal(ours["frames"], expected["frames"]) and torch.equal(
                ours["masks"], expected["masks"]
            )

    # Rerunning a finished set does nothing; other options need --overwrite.
    assert (
        make_vos_shards(davis, tmp_path / "shards", split="train", max_count=2, progress=False) == index_file
    )
    with pytest.raises(ValueError, match="overwrite"):
        make_vos_shards(davis, tmp_path / "shards", split="train", max_count=5, progress=False)


def test_vos_shards_keep_overlapping_objects_and_skip_bad_videos(tmp_path):
    from unveil.datasets.shards import read_index
    from unveil.datasets.vos import VOSFolder
    from unveil.datasets.vos_shards import make_vos_shards, vos_shard_dataset

    root = tmp_path / "sav_like"
    for video in ("a", "b"):
        (root / "JPEGImages" / video).mkdir(parents=True)
        for o in ("000", "001"):
            (root / "Annotations" / video / o).mkdir(parents=True)
        for t in range(3):
            Image.fromarray(np.full((24, 32, 3), 40 * t, np.uint8)).save(
                root / "JPEGImages" / video / f"{t:05d}.jpg"
            )
            whole, part = _box(24, 32, 2, 2, 16), _box(24, 32, 4, 4, 6)  # the second inside the first
            Image.fromarray(whole.astype(np.uint8) * 255).save(
                root / "Annotations" / video / "000" / f"{t:05d}.png"
            )
            Image.fromarray(part.astype(np.uint8) * 255).save(
                root / "Annotations" / video / "001" / f"{t:05d}.png"
            )
    (root / "JPEGImages" / "b" / "00001.jpg").write_bytes(b"\xff\xd8\xff garbage")
    index_file = make_vos_shards(root, tmp_path / "out", split=None, progress=False)
    index = read_index(index_file)
    assert index["num_samples"] == 1 and index["skipped"] == {"unidentified": 1}
    assert index["skipped_samples"][0]["key"] == "b"
    sample = next(iter(vos_shard_dataset(index_file, num_frames=3, train=False, shard_shuffle=False)))[0]
    expected = VOSFolder(root, None, num_frames=3, train=False)[0]
    assert sample["masks"].shape == (3, 2, 24, 32) and (sample["masks"][:, 0] & sample["masks"][:, 1]).any()
    assert torch.equal(sample["masks"], expected["masks"]) and torch.equal(
        sample["frames"], expected["frames"]
    )


def test_vos_shard_reader_counts_bad_samples(davis, tmp_path):
    import webdataset as wds
    from unveil.datasets.vos_shards import make_vos_shards, vos_shard_dataset

    index_file = make_vos_shards(davis, tmp_path / "shards", split="train", progress=False)
    raw = _raw_samples(index_file)
    broken = tmp_path / "broken.tar"
    with wds.TarWriter(str(broken)) as writer:
        for number, sample in enumerate(raw):
            fields = {k: v for k, v in sample.items() if not k.startswith("__")}
            if number == 1:
                fields["frame00000.jpg"] = b"not a jpeg"
            if number == 2:
                meta = json.loads(fields["json"])
                meta["masklet"] = [frame[:0] for frame in meta["masklet"]]  # no object left
                fields["json"] = json.dumps(meta).encode()
            writer.write({"__key__": sample["__key__"], **fields})
    dataset = vos_shard_dataset(str(broken), num_frames=8, train=False, shard_shuffle=False)
    keys = [batch[0]["key"] for batch in dataset]
    assert len(keys) == 1
    counts = dataset.skip_counter.counts()
    assert counts["unidentified"] == 1 and counts["no_annotations"] == 1


def test_shards_main_make_vos(davis, tmp_path, capsys):
    from unveil.launch.shards import main

    out = tmp_path / "main_shards"
    assert main(["make", "vos", "--root", str(davis), "--out", str(out), "--max-count", "2", "--quiet"]) == 0
    assert "3 samples in 2 shards (skipped: none)" in capsys.readouterr().out
    assert main(["make", "vos", "--out", str(out)]) == 2
    assert "give --root" in capsys.readouterr().err


@pytest.mark.slow  # three CLI start-ups (about 20 s each on the shared 2-core machine)
def test_cli_shards_make_vos(davis, tmp_path):
    out = tmp_path / "cli_shards"
    result = subprocess.run(
        [
            UNVEIL,
            "shards",
            "make",
            "vos",
            "--root",
            str(davis),
            "--out",
            str(out),
            "--max-count",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "3 samples in 2 shards" in result.stdout
    info = subprocess.run(
        [UNVEIL, "shards", "info", str(out / "train.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert info.returncode == 0, info.stderr
    assert "2 shards, 3 samples" in info.stdout and "kind vos" in info.stdout
