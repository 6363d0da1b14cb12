"""`unveil synth vos` (DAVIS layout, through the CLI) and the DAVIS/MOSE reader `unveil.datasets.vos.VOSFolder`."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from unveil.datasets.common import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from unveil.datasets.vos import VOSFolder

UNVEIL = str(Path(sys.executable).parent / "unveil")


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vos") / "davis"
    result = subprocess.run(
        [
            UNVEIL,
            "synth",
            "vos",
            "--out",
            str(out),
            "--train_videos",
            "3",
            "--val_videos",
            "2",
            "--frames",
            "10",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return out


def _labels(root: Path, video: str) -> np.ndarray:
    folder = root / "Annotations" / "480p" / video
    return np.stack([np.asarray(Image.open(png)) for png in sorted(folder.glob("*.png"))])


def test_synth_vos_writes_the_davis_layout(davis):
    train = (davis / "ImageSets" / "2017" / "train.txt").read_text().split()
    val = (davis / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert len(train) == 3 and len(val) == 2
    for video in train + val:
        jpgs = sorted((davis / "JPEGImages" / "480p" / video).glob("*.jpg"))
        pngs = sorted((davis / "Annotations" / "480p" / video).glob("*.png"))
        assert [p.name for p in jpgs] == [f"{t:05d}.jpg" for t in range(10)]
        assert [p.stem for p in pngs] == [p.stem for p in jpgs]
        with Image.open(pngs[0]) as png:
            assert png.mode == "P" and png.getpalette()[3:9] == [
                128,
                0,
                0,
                0,
                128,
                0,
            ]  # DAVIS colours of ids 1, 2
        labels = _labels(davis, video)
        first = set(np.unique(labels[0]).tolist()) - {0}
        assert len(first) >= 2  # every object in view at the start
        present = np.array(
            [[(frame == obj).any() for obj in sorted(first)] for frame in labels]
        )  # [T, objects]
        # object 1 leaves the frame and comes back
        assert present[0, 0] and not present[:, 0].all() and present[-1, 0]
        assert labels.shape[1:] == (64, 64)


def test_reader_gives_the_video_segmentation_contract(davis):
    dataset = VOSFolder(davis, split="train", num_frames=8, max_objects=2)
    assert len(dataset) == 3
    sample = dataset[0]
    frames, masks = sample["frames"], sample["masks"]
    assert frames.shape == (8, 3, 64, 64) and frames.dtype == torch.float32
    assert masks.dtype == torch.bool and masks.shape[0] == 8 and masks.shape[2:] == (64, 64)
    assert (
        1 <= masks.shape[1] <= 2 and masks[0].flatten(1).any(-1).all()
    )  # objects visible in the first frame
    assert sample["key"] == "train_0000"
    # the masks are the PNGs' object ids, the frames the normalised JPEGs, of consecutive frames
    labels = _labels(davis, "train_0000")
    matches = [
        s
        for s in range(len(labels) - 7)
        if all(
            any(np.array_equal(masks[:, o].numpy(), labels[s : s + 8] == obj) for obj in range(1, 4))
            for o in range(masks.shape[1])
        )
    ]
    assert matches, "masks are not 8 consecutive annotated frames of the video"
    start = matches[0]
    jpg = np.asarray(
        Image.open(davis / "JPEGImages" / "480p" / "train_0000" / f"{start:05d}.jpg"), dtype=np.float32
    )
    expected = (
        torch.from_numpy(jpg).permute(2, 0, 1) / 255 - torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]
    ) / (torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None])
    torch.testing.assert_close(frames[0], expected)
    # evaluation: the first window and the first objects, the same every time
    evaluation = VOSFolder(davis, split="val", train=False, size=32)
    a, b = evaluation[1], evaluation[1]
    assert (
        a["key"] == "val_0001" and torch.equal(a["masks"], b["masks"]) and a["frames"].shape == (8, 3, 32, 32)
    )
    val_labels = _labels(davis, "val_0001")
    full = VOSFolder(davis, split="val", train=False)[1]["masks"]
    assert torch.equal(full[:, 0], torch.from_numpy(val_labels[:8] == 1))


def test_reader_reads_per_object_pngs_and_mose_layout(davis, tmp_path):
    """MOSE-style folders (no resolution level, no ImageSets) with one PNG folder per object."""
    root = tmp_path / "mose"
    video = "train_0001"
    shutil.copytree(davis / "JPEGImages" / "480p" / video, root / "JPEGImages" / video)
    labels = _labels(davis, video)
    for obj in sorted(set(np.unique(labels).tolist()) - {0}):
        folder = root / "Annotations" / video / f"{obj - 1:03d}"
        folder.mkdir(parents=True)
        for t, frame in enumerate(labels):
            if (frame == obj).any():  # an absent object has no PNG for that frame
                Image.fromarray(((frame == obj) * 255).astype(np.uint8)).save(folder / f"{t:05d}.png")
    per_object = VOSFolder(root, split=None, train=False, max_objects=3)[0]["masks"]
    palette = VOSFolder(davis, split="train", train=False, max_objects=3)[1]["masks"]
    assert torch.equal(per_object, palette)


def test_bad_annotations_are_skipped_and_counted(davis, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(davis, root)
    annotations = root / "Annotations" / "480p"
    (annotations / "train_0000" / "00000.png").write_bytes(b"not a png")  # corrupt
    for png in (annotations / "train_0001").glob("*.png"):  # empty: no object anywhere
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(png)
    for png in sorted((annotations / "train_0002").glob("*.png"))[3:]:  # too few annotated frames left
        png.unlink()
    dataset = VOSFolder(root, split="train", train=False, max_retries=2)  # each video tried once
    with pytest.raises(RuntimeError, match="consecutive samples"):
        dataset[0]
    assert dict(dataset.skipped) == {"unidentified": 1, "no_annotations": 1, "short_clip": 1}
    assert dataset.skip_counter.counts() == {"unidentified": 1, "no_annotations": 1, "short_clip": 1}


def test_bad_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        VOSFolder(tmp_path)
