"""Video decoded by presentation time, on files like the real ones: an mp4 cut with stream copy carries an
edit list that hides the frames before the cut (PyAV honours it, decord does not), and videos stored as
folders of frames. Every frame is identified by a barcode of its source frame number, and checked against
what PyAV shows at that time; the audio of a window is checked against PyAV's decoded track."""

from __future__ import annotations

import json
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import decord
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from unveil.datasets import (
    AudioVideoDataset,
    AudioVideoPipeline,
    FrameFolder,
    VideoDataset,
    clip_indices,
    list_frames,
    load_av_clip,
    make_shards,
    open_video,
)
from unveil.datasets.audio import read_audio
from unveil.datasets.frames import DecordVideo, PyAVVideo
from unveil.datasets.shards import AudioVideoShardDecoder, VideoShardDecoder, reencode_video
from unveil.datasets.synth import video_codec

FPS, NUM_FRAMES, HEIGHT, WIDTH = 30, 120, 32, 64  # 4 s source
CUT = Fraction(17, 10)  # the stream-copy cut: 1.7 s, between the keyframes at 1 s and 2 s
SAMPLE_RATE = 16000
BURST = 2.5  # source time (s) of the one 20 ms tone in the audio: 0.8 s into the cut clip


def barcode(number: int) -> np.ndarray:
    """An RGB frame [HEIGHT, WIDTH, 3] showing ``number`` (0..255) as 8 black/white bars."""
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for bit in range(8):
        if number >> bit & 1:
            frame[:, bit * 8 : bit * 8 + 8] = 255
    return frame


def read_barcode(frame) -> int:
    """The number a frame [H, W, 3] (or [3, H, W]) shows; robust to lossy coding (bar centres only)."""
    frame = torch.as_tensor(np.asarray(frame))
    if frame.shape[0] == 3:
        frame = frame.permute(1, 2, 0)
    return sum(1 << bit for bit in range(8) if frame[:, bit * 8 + 2 : bit * 8 + 6].float().mean() > 127)


def codes(frames) -> list[int]:
    """Barcodes of frames [T, H, W, 3], or of a sample's video [3, T, H, W]."""
    if frames.shape[-1] != 3:  # [3, T, H, W]
        frames = frames.permute(1, 2, 3, 0)
    return [read_barcode(frame) for frame in frames]


def burst_audio(duration: float) -> np.ndarray:
    """Mono float32 silence with a 20 ms 1 kHz tone at ``BURST`` s."""
    t = np.arange(round(duration * SAMPLE_RATE)) / SAMPLE_RATE
    return np.where((t >= BURST) & (t < BURST + 0.02), 0.5 * np.sin(2 * np.pi * 1000 * t), 0).astype(
        np.float32
    )


def encode_source(path: Path) -> None:
    """An H.264 (or MPEG-4) mp4 of barcoded frames 0..NUM_FRAMES-1 at FPS, keyframes every second, with
    B-frames, and an AAC track with the burst."""
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream(video_codec(), rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.options = {"g": str(FPS), "sc_threshold": "0", "bf": "2"}
        audio = out.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        for number in range(NUM_FRAMES):
            frame = av.VideoFrame.from_ndarray(barcode(number), format="rgb24")
            frame.pts, frame.time_base = number, Fraction(1, FPS)
            out.mux(video.encode(frame))
        out.mux(video.encode())
        samples = burst_audio(NUM_FRAMES / FPS)
        for first in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(
                samples[None, first : first + 1024], format="flt", layout="mono"
            )
            frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, first, Fraction(1, SAMPLE_RATE)
            out.mux(audio.encode(frame))
        out.mux(audio.encode())


def stream_copy_cut(source: Path, path: Path, cut: Fraction) -> None:
    """What ``ffmpeg -ss CUT -i source -c copy path`` does: keep the video packets from the keyframe at or
    before the cut (they are needed to decode), the audio from the cut, and shift time so that the cut is
    at 0. The earlier frames get negative times, so the mp4 muxer writes an edit list hiding them."""
    with av.open(str(source)) as container:
        video = container.streams.video[0]
        keyframe = max(
            packet.pts * packet.time_base
            for packet in container.demux(video)
            if packet.pts is not None and packet.is_keyframe and packet.pts * packet.time_base <= cut
        )
    with av.open(str(source)) as container, av.open(str(path), "w", format="mp4") as out:
        streams = {stream.index: out.add_stream_from_template(stream) for stream in container.streams}
        for packet in container.demux():
            if packet.dts is None:
                continue
            time = packet.pts * packet.time_base
            if time < (keyframe if packet.stream.type == "video" else cut):
                continue
            shift = int(cut / packet.time_base)
            packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def delay_video(source: Path, path: Path, seconds: Fraction) -> None:
    """``source`` remuxed with its video starting ``seconds`` after its audio (an empty edit)."""
    with av.open(str(source)) as container, av.open(str(path), "w", format="mp4") as out:
        streams = {stream.index: out.add_stream_from_template(stream) for stream in container.streams}
        for packet in container.demux():
            if packet.dts is None:
                continue
            if packet.stream.type == "video":
                shift = int(seconds / packet.time_base)
                packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def pyav_frames(path) -> tuple[list[float], list[int]]:
    """What PyAV shows: each decoded frame's time (s from the stream's start) and barcode."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base)
        shown = [
            (frame.time - start, read_barcode(frame.to_ndarray(format="rgb24")))
            for frame in container.decode(stream)
        ]
    return [time for time, _ in shown], [code for _, code in shown]


def pyav_audio(path) -> tuple[float, np.ndarray]:
    """PyAV's decoded mono track: its first sample's time (s from the video stream's start), samples."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        start = float(video.start_time * video.time_base)
        frames = list(container.decode(audio=0))
        return frames[0].time - start, np.concatenate([frame.to_ndarray()[0] for frame in frames])


def expected_window(times: list[float], length: float, duration: float, fps: float, num_frames: int):
    """The centred evaluation window, worked out from PyAV's frame times: its start (the time of the
    middle frame it can start at) and the frame index shown at each sampling time."""
    starts = [k for k, time in enumerate(times) if time <= length - duration + 1e-6]
    start = times[starts[-1] // 2]
    shown = [
        max(k for k, time in enumerate(times) if time <= start + i / fps + 1e-6) for i in range(num_frames)
    ]
    return start, shown


def identity(video):
    return video


def trim_end(source: Path, path: Path, keep: float) -> None:
    """``source`` with its video edit list shortened to the first ``keep`` of its length: the frames past
    it are hidden from the end, and decord's first timestamp is still 0."""
    data = bytearray(source.read_bytes())
    at = data.index(b"elst", data.index(b"vide"))  # the video track's edit list (version 0, one entry)
    assert data[at + 4] == 0 and int.from_bytes(data[at + 8 : at + 12], "big") == 1
    shown = int.from_bytes(data[at + 12 : at + 16], "big")
    data[at + 12 : at + 16] = round(shown * keep).to_bytes(4, "big")
    path.write_bytes(data)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """``plain``: the source mp4; ``cut``: its stream-copy cut at 1.7 s (edit list hiding the frames from
    the keyframe at 1 s); ``trimmed``: the source with an edit list hiding its last second; ``delayed``:
    the video starts 0.5 s after the audio."""
    folder = tmp_path_factory.mktemp("timing")
    encode_source(folder / "plain.mp4")
    stream_copy_cut(folder / "plain.mp4", folder / "cut.mp4", CUT)
    trim_end(folder / "plain.mp4", folder / "trimmed.mp4", 0.75)
    delay_video(folder / "plain.mp4", folder / "delayed.mp4", Fraction(1, 2))
    return {name: folder / f"{name}.mp4" for name in ("plain", "cut", "trimmed", "delayed")}


@pytest.fixture(scope="module")
def reference(clips) -> dict:
    return {name: pyav_frames(path) for name, path in clips.items()}


def test_the_edit_lists_are_ones_decord_misreads(clips, reference):
    """The fixtures are the real-world cases: decord counts the hidden frames (and, in the cut clip, starts
    before 0)."""
    times, shown = reference["cut"]
    first_shown = int(CUT * FPS)
    assert shown == list(range(first_shown, NUM_FRAMES))  # PyAV: from the cut on
    assert times[0] == 0 and times[-1] == pytest.approx((NUM_FRAMES - 1 - first_shown) / FPS)
    reader = decord.VideoReader(str(clips["cut"]), ctx=decord.cpu(0), num_threads=1)
    assert len(reader) == NUM_FRAMES - FPS  # from the keyframe at 1 s: 21 frames more than are shown
    assert reader.get_frame_timestamp([0])[0, 0] == pytest.approx(-(float(CUT) - 1), abs=1e-3)

    times, shown = reference["trimmed"]
    assert shown == list(range(3 * FPS))  # PyAV: the first 3 s
    assert len(decord.VideoReader(str(clips["trimmed"]), ctx=decord.cpu(0), num_threads=1)) > len(shown)


@pytest.mark.parametrize("name", ["plain", "cut", "trimmed", "delayed"])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_open_video_shows_what_pyav_shows(clips, reference, name, as_bytes):
    times, shown = reference[name]
    video = open_video(clips[name].read_bytes() if as_bytes else clips[name])
    # Files decord reads right keep it (an empty edit delays the whole track: decord's times are relative)
    assert isinstance(video, PyAVVideo if name in ("cut", "trimmed") else DecordVideo)
    assert video.num_frames == len(shown)
    assert torch.allclose(video.times, torch.tensor(times, dtype=torch.float64), atol=1e-4)
    assert video.duration == pytest.approx(len(shown) / FPS, abs=1e-4)
    assert codes(video.read(range(video.num_frames))) == shown  # frame by frame
    picks = [50, 3, 50, len(shown) - 1, 20]  # any order, repeats, a seek past keyframes
    assert codes(video.read(picks)) == [shown[i] for i in picks]
    assert video.frame_at(1.0) == round(1.0 * FPS) and video.first_frame_from(1.01) == round(1.0 * FPS) + 1


def test_open_video_reads_the_same_frames_with_decords_torch_bridge(clips, reference):
    """decord's output type is process-wide: the official SAM 2 loader sets the torch bridge for everyone."""
    import decord

    times, shown = reference["plain"]
    decord.bridge.set_bridge("torch")
    try:
        video = open_video(clips["plain"])
        assert isinstance(video, DecordVideo)
        assert codes(video.read([0, 7, len(shown) - 1])) == [shown[0], shown[7], shown[-1]]
    finally:
        decord.bridge.set_bridge("native")


def _video_folder(root: Path, clips) -> Path:
    for name, path in clips.items():
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        (root / "train" / name / path.name).write_bytes(path.read_bytes())
    return root


def test_video_datasets_folder_csv_and_shards_take_the_frames_pyav_shows(clips, reference, tmp_path):
    times, shown = reference["cut"]
    root = _video_folder(tmp_path / "videos", clips)
    folder = VideoDataset(root, num_frames=8, sampling_rate=4, train=False, transform=identity)
    samples = {folder.records[i].key: folder[i] for i in range(len(folder))}
    expected = [shown[i] for i in clip_indices(len(shown), 8, 4, train=False)]
    assert codes(samples["cut/cut.mp4"]["video"]) == expected

    # A manifest segment selects the frames shown during it.
    (root / "segments.csv").write_text("train/cut/cut.mp4,0,0.5,1.5\n")
    segment = VideoDataset(
        root, csv=root / "segments.csv", num_frames=8, sampling_rate=4, train=False, transform=identity
    )
    first = max(k for k, time in enumerate(times) if time <= 0.5 + 1e-6)
    end = min(k for k, time in enumerate(times) if time >= 1.5 - 1e-6)
    expected_segment = [shown[i] for i in clip_indices(len(shown), 8, 4, False, first, end)]
    assert codes(segment[0]["video"]) == expected_segment
    assert all(0.5 - 1 / FPS < times[shown.index(code)] < 1.5 for code in expected_segment)

    index = make_shards("videos", tmp_path / "shards", root, progress=False)
    decoder = VideoShardDecoder(identity, num_frames=8, sampling_rate=4, train=False)
    for sample in raw_shard_samples(index):
        meta = json.loads(sample["json"])
        decoded = decoder.to_sample(decoder.decode(sample), sample)
        assert codes(decoded["video"]) == codes(samples[meta["key"]]["video"])
        if meta["key"] == "cut/cut.mp4":  # the index records the length PyAV shows
            assert meta["num_frames"] == len(shown) and meta["duration"] == pytest.approx(len(shown) / FPS)


def raw_shard_samples(index: Path) -> list[dict]:
    """The raw samples (``{"__key__", ext: bytes}``) of a shard set, in order."""
    samples: dict[str, dict] = {}
    for shard in json.loads(index.read_text())["shards"]:
        with tarfile.open(index.parent / shard["name"]) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {"__key__": key})[extension] = tar.extractfile(member).read()
    return list(samples.values())


def test_audio_video_window_takes_the_frames_and_audio_pyav_shows(clips, reference):
    """Frames of a 1 s window at 4 fps and its audio, on the clock PyAV shows: checked against PyAV's
    frames and decoded track, and against the source clock (barcodes = source frame, burst at BURST)."""
    times, shown = reference["cut"]
    clip = load_av_clip(clips["cut"], duration=1.0, fps=4.0, train=False)
    start, indices = expected_window(times, len(shown) / FPS, 1.0, 4.0, 4)
    assert clip.start == pytest.approx(start, abs=1e-6)
    assert clip.frame_indices.tolist() == indices and codes(clip.frames) == [shown[i] for i in indices]
    # The frame shown at window time t is the source frame at t + CUT.
    assert codes(clip.frames) == [int((start + i / 4 + float(CUT)) * FPS + 1e-6) for i in range(4)]

    audio_start, samples = pyav_audio(clips["cut"])
    first = round((start - audio_start) * SAMPLE_RATE)
    assert torch.allclose(clip.waveform[0], torch.from_numpy(samples[first : first + SAMPLE_RATE]), atol=1e-6)
    onset = int(np.argmax(np.abs(clip.waveform[0].numpy()) > 0.1)) / SAMPLE_RATE  # the burst, in the window
    assert start + onset + float(CUT) == pytest.approx(BURST, abs=0.01)  # on the source clock too


def test_audio_video_datasets_folder_csv_and_shards_agree_with_pyav(clips, reference, tmp_path):
    times, shown = reference["cut"]
    root = _video_folder(tmp_path / "av", {"cut": clips["cut"]})
    (root / "train.csv").write_text("train/cut/cut.mp4,cut\n")
    pipeline = AudioVideoPipeline(duration=1.0, fps=4.0, train=False, video_transform=identity)
    start, indices = expected_window(times, len(shown) / FPS, 1.0, 4.0, 4)
    audio_start, samples = pyav_audio(clips["cut"])
    first = round((start - audio_start) * SAMPLE_RATE)
    fbank = pipeline.fbank_transform(torch.from_numpy(samples[first : first + SAMPLE_RATE])[None])

    datasets = {
        "folder": AudioVideoDataset(root, pipeline=pipeline),
        "csv": AudioVideoDataset(root, csv=root / "train.csv", pipeline=pipeline),
    }
    outputs = {name: dataset[0] for name, dataset in datasets.items()}
    index = make_shards("audio-video", tmp_path / "shards", root, progress=False)
    decoder = AudioVideoShardDecoder(pipeline, num_classes=1)
    (sample,) = raw_shard_samples(index)
    outputs["shards"] = decoder.to_sample(decoder.decode(sample), sample)
    for name, output in outputs.items():
        assert codes(output["video"]) == [shown[i] for i in indices], name
        assert torch.allclose(output["fbank"], fbank, atol=1e-5), name


# ------------------------------------------------------------------------------------------ frame folders


def write_frames(folder: Path, count: int, name=lambda i: f"frame_{i + 1}.jpg") -> Path:
    """JPEG frames showing 0..count-1, named without zero padding (natural order is not string order)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(barcode(i)).save(folder / name(i), quality=95)
    return folder


def test_frame_folder_lists_in_natural_order_and_reads_lazily(tmp_path):
    folder = write_frames(tmp_path / "clip", 12)
    (folder / ".hidden.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not a frame")
    assert [path.name for path in list_frames(folder)] == [f"frame_{i}.jpg" for i in range(1, 13)]
    (folder / "frame_8.jpg").write_bytes(b"not a jpeg")  # frame 7 is corrupt: opening decodes nothing
    video = FrameFolder(folder, fps=10)
    assert len(video) == video.num_frames == 12 and video.fps == pytest.approx(10)
    assert torch.allclose(video.times, torch.arange(12, dtype=torch.float64) / 10)
    assert video.duration == pytest.approx(1.2) and video.frame_at(0.55) == 5
    assert video.read_frame(11).shape == (HEIGHT, WIDTH, 3) and read_barcode(video.read_frame(11)) == 11
    assert codes(video.read([9, 2, 9])) == [9, 2, 9]
    with pytest.raises(RuntimeError):
        video.read_frame(7)
    assert isinstance(open_video(folder, frames_fps=10), FrameFolder)
    with pytest.raises(FileNotFoundError):
        FrameFolder(tmp_path / "missing")


def test_video_dataset_reads_frame_folders_from_folders_and_csv(clips, tmp_path):
    root = tmp_path / "k400"
    write_frames(root / "train" / "a" / "clip0", 40, name=lambda i: f"img_{i + 1:05d}.jpg")
    (root / "train" / "a" / "empty").mkdir()
    (root / "train" / "b").mkdir()
    (root / "train" / "b" / "plain.mp4").write_bytes(clips["plain"].read_bytes())
    dataset = VideoDataset(
        root, num_frames=4, sampling_rate=3, train=False, transform=identity, frames_fps=10
    )
    assert [record.key for record in dataset.records] == ["a/clip0", "a/empty", "b/plain.mp4"]
    assert codes(dataset[0]["video"]) == clip_indices(40, 4, 3, train=False).tolist()
    assert dataset[0]["label"] == 0
    assert dataset[1]["key"] == "b/plain.mp4" and dataset.skipped["missing"] == 1  # the empty folder: skipped

    (root / "train.csv").write_text("train/a/clip0,0\ntrain/a/clip0,0,1.0,2.0\n")
    manifest = VideoDataset(
        root,
        csv=root / "train.csv",
        num_frames=4,
        sampling_rate=3,
        train=False,
        transform=identity,
        frames_fps=10,
    )
    assert codes(manifest[0]["video"]) == clip_indices(40, 4, 3, train=False).tolist()
    assert (
        codes(manifest[1]["video"]) == clip_indices(40, 4, 3, False, 10, 20).tolist()
    )  # frames of 1-2 s at 10 fps


def test_audio_video_frame_folder_with_its_audio_file(tmp_path):
    root = tmp_path / "av"
    folder = write_frames(root / "train" / "a" / "clip0", 40)  # 4 s at 10 fps
    soundfile.write(root / "train" / "a" / "clip0.wav", burst_audio(4.0), SAMPLE_RATE)
    pipeline = AudioVideoPipeline(duration=1.0, fps=4.0, train=False, video_transform=identity, frames_fps=10)
    clip = pipeline.load(folder, root / "train" / "a" / "clip0.wav", start=2.2)
    assert codes(clip.frames) == [22, 24, 27, 29]  # shown at 2.2, 2.45, 2.7, 2.95 s
    onset = int(np.argmax(np.abs(clip.waveform[0].numpy()) > 0.1)) / SAMPLE_RATE
    assert 2.2 + onset == pytest.approx(BURST, abs=0.001)  # the wav is lossless: to the sample

    dataset = AudioVideoDataset(root, pipeline=pipeline)  # the wav beside the folder is its audio
    assert dataset.records[0].audio == root / "train" / "a" / "clip0.wav"
    assert codes(dataset[0]["video"]) == [15, 17, 20, 22]  # centred: the window starts at 1.5 s

    silent = AudioVideoPipeline(duration=1.0, fps=4.0, train=False, missing_audio="zeros", frames_fps=10)
    assert silent.load(folder).audio_missing  # a folder of frames has no track
    (root / "train" / "a" / "clip0.wav").unlink()
    skipping = AudioVideoDataset(
        root, pipeline=AudioVideoPipeline(duration=1.0, fps=4.0, frames_fps=10), max_retries=0
    )
    with pytest.raises(RuntimeError, match="failed to decode"):
        skipping[0]
    assert skipping.skipped == {"no_audio": 1}  # skipped and counted, with its reason


def test_datamodules_pass_the_frame_rate_of_frame_folders(tmp_path):
    from unveil.datasets import AudioVideoDataModule, VideoDataModule

    root = tmp_path / "frames"
    for name in ("a", "b"):
        write_frames(root / "train" / name / "clip", 40)
        soundfile.write(root / "train" / name / "clip.wav", burst_audio(4.0), SAMPLE_RATE)
    common = {"root": str(root), "val_split": None, "input_size": 32, "batch_size": 2,
              "loader": {"num_workers": 0, "pin_memory": False}}
    video = VideoDataModule(**common, num_frames=4, sampling_rate=3, frames_fps=10)
    batch = next(iter(video.train_dataloader()))
    assert video.train_set.frames_fps == 10 and batch["video"].shape == (2, 3, 4, 32, 32)
    audio_video = AudioVideoDataModule(**common, duration=1.0, video_fps=4.0, frames_fps=10)
    batch = next(iter(audio_video.train_dataloader()))
    assert audio_video.pipeline(True).frames_fps == 10
    assert batch["video"].shape == (2, 3, 4, 32, 32) and batch["fbank"].shape == (2, 1, 100, 128)
    with pytest.raises(ValueError, match="frames_fps"):
        VideoDataModule(**common, frames_fps=0)


@pytest.mark.parametrize("name", ["cut", "delayed"])
def test_reencoding_for_shards_keeps_the_frames_and_the_audio_offset(clips, reference, name):
    """``shards make --short-side`` re-encodes: the frames PyAV shows, and the audio's offset from the
    first frame (0.028 s in the cut, -0.5 s in the delayed clip) kept to within half a frame."""
    data, fps, count = reencode_video(clips[name].read_bytes(), short_side=32)
    video = open_video(data)
    assert count == video.num_frames == len(reference[name][1]) and fps == FPS
    assert codes(video.read(range(count))) == reference[name][1]
    assert read_audio(data).start == pytest.approx(read_audio(clips[name]).start, abs=0.5 / FPS)
