"""The synthetic-data generators: real formats, deterministic output, learnable structure."""

from __future__ import annotations

import itertools
import math

import decord
import numpy as np
import pytest
from PIL import Image
from unveil.datasets import synth


def _files(root, pattern):
    return sorted(p for p in root.rglob(pattern) if p.is_file())


def test_class_names_sorted_and_bounded():
    assert synth.class_names(4) == sorted(["circle", "square", "triangle", "star"])
    assert synth.class_names(len(synth.SHAPE_KINDS)) == sorted(synth.SHAPE_KINDS)
    for bad in (0, len(synth.SHAPE_KINDS) + 1):
        with pytest.raises(ValueError, match="num_classes"):
            synth.class_names(bad)


def test_shape_kinds_have_distinct_silhouettes():
    """The class is the shape kind, so every pair of kinds must differ visibly at the same size and angle."""
    masks = {}
    for kind in synth.SHAPE_KINDS:
        canvas = Image.new("RGB", (64, 64))
        synth._draw_shape(canvas, kind, (32.0, 32.0), 24.0, 0.3, (255, 255, 255))
        masks[kind] = np.asarray(canvas)[..., 0] > 127
        assert 0.05 < masks[kind].mean() < 0.8, kind
    for a, b in itertools.combinations(synth.SHAPE_KINDS, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.9, (a, b, iou)


def test_image_folder_layout_and_decodable(tmp_path):
    out = synth.make_image_folder(
        tmp_path / "img", num_classes=3, train_per_class=2, val_per_class=1, size=40, progress=False
    )
    assert sorted(p.name for p in (out / "train").iterdir()) == synth.class_names(3)
    train, val = _files(out / "train", "*.JPEG"), _files(out / "val", "*.JPEG")
    assert len(train) == 6 and len(val) == 3
    for path in train + val:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (40, 40)
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.std() > 10  # not a blank image


def test_image_folder_is_deterministic(tmp_path):
    kwargs = {"num_classes": 2, "train_per_class": 2, "val_per_class": 1, "size": 32, "progress": False}
    a = synth.make_image_folder(tmp_path / "a", seed=3, **kwargs)
    b = synth.make_image_folder(tmp_path / "b", seed=3, **kwargs)
    c = synth.make_image_folder(tmp_path / "c", seed=4, **kwargs)
    files_a, files_b, files_c = (_files(root, "*.JPEG") for root in (a, b, c))
    assert [p.relative_to(a) for p in files_a] == [p.relative_to(b) for p in files_b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(files_a, files_b))
    assert all(x.read_bytes() != z.read_bytes() for x, z in zip(files_a, files_c))
    # Samples draw from their own stream: writing fewer samples does not change the first ones.
    d = synth.make_image_folder(
        tmp_path / "d", seed=3, num_classes=2, train_per_class=1, val_per_class=0, size=32, progress=False
    )
    first = d / "train" / "circle" / "circle_00000.JPEG"
    assert first.read_bytes() == (a / "train" / "circle" / "circle_00000.JPEG").read_bytes()
    assert not (d / "val").exists()


def _decode_all(path):
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy(), reader.get_avg_fps()


def test_video_folder_layout_manifests_and_decodable(tmp_path):
    out = synth.make_video_folder(
        tmp_path / "vid",
        num_classes=2,
        train_per_class=2,
        val_per_class=1,
        num_frames=12,
        fps=8,
        size=32,
        progress=False,
    )
    names = synth.class_names(2)
    assert (out / "classes.txt").read_text().split() == names
    for split, count in (("train", 4), ("val", 2)):
        lines = (out / f"{split}.csv").read_text().splitlines()
        assert len(lines) == count
        for line in lines:
            relative, label = line.split(",")
            path = out / relative  # paths are relative to the CSV's folder
            assert relative.startswith(f"{split}/") and path.suffix == ".mp4" and path.is_file()
            assert path.parent.name == names[int(label)]
            frames, fps = _decode_all(path)
            assert frames.shape == (12, 32, 32, 3) and frames.dtype == np.uint8
            assert fps == pytest.approx(8)
            # The shapes move: consecutive frames differ, yet the background stays (frames stay alike).
            steps = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
            assert (steps > 0.05).all() and (steps < 40).all()


def test_video_folder_is_deterministic(tmp_path):
    kwargs = {
        "num_classes": 1,
        "train_per_class": 2,
        "val_per_class": 0,
        "num_frames": 8,
        "fps": 8,
        "size": 32,
        "progress": False,
    }
    a = synth.make_video_folder(tmp_path / "a", seed=1, **kwargs)
    b = synth.make_video_folder(tmp_path / "b", seed=1, **kwargs)
    c = synth.make_video_folder(tmp_path / "c", seed=2, **kwargs)
    assert (a / "train.csv").read_text() == (b / "train.csv").read_text()
    for name in ("circle_00000.mp4", "circle_00001.mp4"):
        frames_a, _ = _decode_all(a / "train" / "circle" / name)
        frames_b, _ = _decode_all(b / "train" / "circle" / name)
        frames_c, _ = _decode_all(c / "train" / "circle" / name)
        np.testing.assert_array_equal(frames_a, frames_b)
        # One encoder thread: the files themselves are identical too (same PyAV/x264 build).
        assert (a / "train" / "circle" / name).read_bytes() == (b / "train" / "circle" / name).read_bytes()
        assert np.abs(frames_a.astype(np.int16) - frames_c).mean() > 5


def test_render_video_motion_is_smooth_and_bounces():
    """Shapes stay on screen for many frames (they bounce), and move smoothly: consecutive frames change
    far less than frames 40 apart."""
    size = 48
    frames = list(synth.render_video("square", np.random.default_rng(0), size, 300))
    assert len(frames) == 300 and frames[0].shape == (size, size, 3)
    video = np.stack(frames).astype(np.int16)
    # render_video draws the background first from the same stream, so it can be rebuilt exactly.
    background = synth._random_background(np.random.default_rng(0), size).astype(np.int16)
    shape_pixels = (video != background).any(axis=-1).sum(axis=(1, 2))
    assert shape_pixels.min() > 30  # without bounces the shapes would have left a 48-pixel frame
    near = np.abs(video[1:] - video[:-1]).mean()
    far = np.abs(video[40:] - video[:-40]).mean()
    assert 0 < near < far


def test_write_mp4_codec_and_errors(tmp_path):
    assert synth.video_codec() in ("libx264", "mpeg4")
    frames = [np.full((32, 64, 3), value, np.uint8) for value in (0, 128, 255)]
    synth.write_mp4(tmp_path / "x.mp4", frames, fps=4)
    decoded, _ = _decode_all(tmp_path / "x.mp4")
    assert decoded.shape == (3, 32, 64, 3)
    assert np.abs(decoded.mean(axis=(1, 2, 3)) - [0, 128, 255]).max() < 8
    with pytest.raises(ValueError, match="at least one frame"):
        synth.write_mp4(tmp_path / "empty.mp4", [], fps=4)
    for bad_size in (33, 48):
        with pytest.raises(ValueError, match="multiple of 32"):
            synth.make_video_folder(tmp_path / "odd", size=bad_size, progress=False)


def test_command_line(tmp_path, capsys):
    synth.main(
        [
            "images",
            "--out",
            str(tmp_path / "i"),
            "--num-classes",
            "2",
            "--train-per-class",
            "1",
            "--val-per-class",
            "1",
            "--size",
            "24",
        ]
    )
    assert len(_files(tmp_path / "i", "*.JPEG")) == 4
    synth.main(
        [
            "videos",
            "--out",
            str(tmp_path / "v"),
            "--num-classes",
            "1",
            "--train-per-class",
            "1",
            "--val-per-class",
            "0",
            "--size",
            "32",
            "--num-frames",
            "4",
        ]
    )
    assert len(_files(tmp_path / "v", "*.mp4")) == 1
    assert str(tmp_path / "v") in capsys.readouterr().out


def test_shape_outline_geometry():
    outline, hole = synth._shape_outline("hexagon", 10.0, 0.0)
    assert outline.shape == (6, 2) and hole is None
    np.testing.assert_allclose(np.hypot(*outline.T), 10.0)
    _, hole = synth._shape_outline("ring", 10.0, 0.0)
    assert hole is not None and np.hypot(*hole.T).max() < 10.0
    star, _ = synth._shape_outline("star", 10.0, math.pi / 7)
    assert star.shape == (10, 2)
    with pytest.raises(ValueError, match="unknown shape"):
        synth._shape_outline("blob", 1.0, 0.0)
