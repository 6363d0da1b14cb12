"""Audio-video clips: time alignment of frames and audio, window and frame sampling, the missing-audio
policy, bad files, manifests, the generator whose sound follows the picture, and the DataModule."""

from __future__ import annotations

import logging
import shutil

import decord
import numpy as np
import pytest
import soundfile
import torch
from unveil.datasets import (
    AudioVideoDataModule,
    AudioVideoDataset,
    AudioVideoPipeline,
    kaldi_fbank,
    load_av_clip,
    make_audio_video_folder,
    read_av_manifest,
    read_class_index,
    synth,
)
from unveil.datasets.audio import decode_audio
from unveil.datasets.audio_video import window_frame_indices, window_start
from unveil.datasets.common import skip_reason
from unveil.datasets.skips import BadSample

SR, FPS, SIZE = 16000, 8, 64
APPEAR_FRAME = 13  # the square appears, and the tone starts, at 13 / 8 = 1.625 s
CLIP_SECONDS = 4.0


def _onset_clip(path, wav_path=None, audio=True):
    """A 4 s clip: black until frame 13, then a white square; a 1 kHz tone from exactly 1.625 s."""
    frames = []
    for index in range(round(CLIP_SECONDS * FPS)):
        frame = np.zeros((SIZE, SIZE, 3), np.uint8)
        if index >= APPEAR_FRAME:
            frame[16:48, 16:48] = 255
        frames.append(frame)
    t = np.arange(round(CLIP_SECONDS * SR)) / SR
    tone = np.where(t >= APPEAR_FRAME / FPS, 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0).astype(np.float32)
    if audio:
        synth.write_av(path, frames, FPS, tone, SR)
    else:
        synth.write_mp4(path, frames, FPS)
    if wav_path is not None:
        synth.write_audio(wav_path, tone, SR)
    return path


@pytest.fixture(scope="module")
def onset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onset")
    return _onset_clip(folder / "onset.mp4", folder / "onset.wav")


def _audio_onset_frame(waveform: torch.Tensor) -> int | None:
    """First fbank frame whose log energy is halfway between silence and the tone, or None."""
    energy = kaldi_fbank(waveform).exp().sum(1).log()  # [frames]
    low, high = energy.min(), energy.max()
    if high - low < 5:  # all silence or all tone
        return None
    return int((energy > (low + high) / 2).nonzero()[0])


def _first_visible(frames: torch.Tensor) -> int | None:
    """Index of the first frame [T, H, W, 3] that shows the white square, or None."""
    visible = (frames.float().mean((1, 2, 3)) > 40).nonzero()
    return int(visible[0]) if len(visible) else None


# ------------------------------------------------------------------------------------ window sampling


def test_window_start_is_on_frame_boundaries_random_or_centred():
    starts = {window_start(10.0, 4.0, 8.0, train=True) for _ in range(300)}
    assert min(starts) == 0.0 and max(starts) == 6.0 and len(starts) == 49
    assert all((s * 8).is_integer() for s in starts)
    assert window_start(10.0, 4.0, 8.0, train=False) == 3.0
    assert window_start(3.0, 4.0, 8.0, train=True) == 0.0  # shorter than the window


def test_frame_indices_by_rate_and_by_stride():
    # MAViL: 2 fps over a 4 s window of a 30 fps video: 8 frames, 15 frames apart.
    by_rate = window_frame_indices(2.0, 4.0, 30.0, 300, 8, fps=2.0)
    assert by_rate.tolist() == [60 + 15 * i for i in range(8)]
    by_stride = window_frame_indices(2.0, 4.0, 30.0, 300, 8, stride=15)
    assert torch.equal(by_rate, by_stride)
    # A fractional step (25 fps -> 2 fps) takes the frame shown at each sampling time.
    assert window_frame_indices(0.0, 4.0, 25.0, 250, 8, fps=2.0).tolist() == [0, 12, 25, 37, 50, 62, 75, 87]
    # Indices never leave the window, nor the video.
    assert window_frame_indices(0.0, 1.0, 8.0, 100, 4, stride=4).tolist() == [0, 4, 7, 7]
    assert window_frame_indices(0.0, 4.0, 8.0, 20, 8, fps=2.0).tolist() == [0, 4, 8, 12, 16, 19, 19, 19]
    with pytest.raises(ValueError, match="exactly one"):
        window_frame_indices(0.0, 1.0, 8.0, 100, 4, fps=2.0, stride=2)


# ------------------------------------------------------------------------------------------ alignment


@pytest.mark.parametrize("source", ["track", "wav", "bytes"])
def test_audio_and_frames_come_from_the_same_time_span(onset, source):
    wav = onset.with_suffix(".wav")
    video, audio = {
        "track": (onset, None),
        "wav": (onset, wav),
        "bytes": (onset.read_bytes(), wav.read_bytes()),
    }[source]
    # A fixed window: the square appears at frame 9 of the window (0.5 + 9 / 8 = 1.625 s), and the
    # tone's onset is 112.5 fbank frames (10 ms) into it.
    clip = load_av_clip(video, audio, duration=2.0, fps=8.0, start=0.5, train=False)
    assert clip.frames.shape == (16, SIZE, SIZE, 3) and clip.waveform.shape == (1, 2 * SR)
    assert clip.frame_indices.tolist() == list(range(4, 20))
    assert _first_visible(clip.frames) == 9
    assert abs(_audio_onset_frame(clip.waveform) - 112.5) <= 3

    # Random training windows: wherever the window falls, the picture and the sound agree on the onset.
    torch.manual_seed(0)
    checked = 0
    for _ in range(6):
        clip = load_av_clip(video, audio, duration=2.0, fps=4.0, train=True)
        assert (clip.start * FPS).is_integer() and 0 <= clip.start <= 2.0
        in_window = clip.start < APPEAR_FRAME / FPS < clip.start + 2.0
        audio_onset = _audio_onset_frame(clip.waveform)
        if in_window and APPEAR_FRAME / FPS - clip.start > 0.05:
            expected = (APPEAR_FRAME / FPS - clip.start) * 100
            assert abs(audio_onset - expected) <= 3, (clip.start, audio_onset)
            # 4 fps: frame i is shown at start + i / 4; the first showing the square is the first at or
            # after the onset.
            first = _first_visible(clip.frames)
            assert clip.start + first / 4 >= APPEAR_FRAME / FPS > clip.start + (first - 1) / 4
            checked += 1
    assert checked >= 2


def test_shifted_audio_breaks_the_alignment_check(onset, tmp_path):
    """The alignment test can fail: a wav 100 ms late puts the onset 10 fbank frames off."""
    samples, _ = soundfile.read(onset.with_suffix(".wav"), dtype="float32")
    late = np.concatenate([np.zeros(SR // 10, np.float32), samples])[: len(samples)]
    soundfile.write(tmp_path / "late.wav", late, SR)
    clip = load_av_clip(onset, tmp_path / "late.wav", duration=2.0, fps=8.0, start=0.5, train=False)
    assert abs(_audio_onset_frame(clip.waveform) - 112.5) > 8


def test_pipeline_sample_contract(onset):
    pipeline = AudioVideoPipeline(duration=2.0, fps=2.0, train=True, input_size=32, freqm=8, timem=20)
    sample = pipeline(onset)
    assert sample["video"].shape == (3, 4, 32, 32) and sample["video"].dtype == torch.float32
    assert type(sample["video"]) is torch.Tensor
    assert sample["fbank"].shape == (1, 200, 128) and sample["audio_missing"].item() is False
    # Evaluation is the centred window ([1.0, 3.0) of a 4 s clip) and deterministic.
    evaluation = AudioVideoPipeline(duration=2.0, fps=2.0, train=False, input_size=32, target_length=256)
    first, second = evaluation(onset), evaluation(onset)
    assert torch.equal(first["video"], second["video"]) and torch.equal(first["fbank"], second["fbank"])
    assert first["fbank"].shape == (1, 256, 128)
    assert evaluation.load(onset).start == 1.0
    with pytest.raises(ValueError, match="do not fit"):
        AudioVideoPipeline(duration=2.0, fps=2.0, num_frames=8)
    with pytest.raises(ValueError, match="exactly one"):
        AudioVideoPipeline(fps=2.0, stride=2, num_frames=4)


# ------------------------------------------------------------------------------------ missing audio


@pytest.fixture(scope="module")
def no_audio_and_silent(tmp_path_factory):
    folder = tmp_path_factory.mktemp("missing")
    _onset_clip(folder / "no_audio.mp4", audio=False)
    frames = [np.full((SIZE, SIZE, 3), 90, np.uint8)] * 24
    synth.write_av(folder / "silent.mp4", frames, FPS, np.zeros(3 * SR, np.float32), SR)
    quiet = (1e-5 * np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 440)).astype(np.float32)
    synth.write_audio(folder / "quiet.wav", quiet, SR)  # quantises to all zeros: silent
    return folder


@pytest.mark.parametrize(
    "name,audio,reason",
    [
        ("no_audio.mp4", None, "no_audio"),
        ("silent.mp4", None, "silent"),
        ("silent.mp4", "quiet.wav", "silent"),
    ],
)
def test_missing_audio_policy(no_audio_and_silent, name, audio, reason):
    video = no_audio_and_silent / name
    audio = None if audio is None else no_audio_and_silent / audio
    with pytest.raises(BadSample) as info:
        load_av_clip(video, audio, duration=2.0, missing_audio="skip")
    assert info.value.skip_reason == reason and skip_reason(info.value) == reason

    pipeline = AudioVideoPipeline(duration=2.0, input_size=32, missing_audio="zeros")
    sample = pipeline(video, audio)
    assert sample["audio_missing"].item() is True
    assert sample["fbank"].shape == (1, 200, 128) and not sample["fbank"].any()
    assert sample["video"].shape == (3, 4, 32, 32)


def test_silence_threshold_is_configurable(onset):
    clip = load_av_clip(onset, duration=2.0, silence_threshold=0.1)
    assert not clip.audio_missing  # the tone peaks at 0.5
    with pytest.raises(BadSample, match="silent"):
        load_av_clip(onset, duration=2.0, silence_threshold=0.9)


# ------------------------------------------------------------------------------------------ bad files


def test_bad_clips_are_skipped_with_key_and_reason(onset, no_audio_and_silent, tmp_path, caplog):
    shutil.copy(onset, tmp_path / "good.mp4")
    shutil.copy(no_audio_and_silent / "no_audio.mp4", tmp_path / "no_audio.mp4")
    (tmp_path / "corrupt.mp4").write_bytes(onset.read_bytes()[:3000])  # header cut short
    (tmp_path / "garbage.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(2000))
    frames = [np.zeros((SIZE, SIZE, 3), np.uint8)] * 8  # 1 s: shorter than the 2 s window
    tone = 0.5 * np.sin(2 * np.pi * 500 * np.arange(SR) / SR).astype(np.float32)
    synth.write_av(tmp_path / "short.mp4", frames, FPS, tone, SR)
    (tmp_path / "av.csv").write_text(
        "missing.mp4,0\ncorrupt.mp4,0\nno_audio.mp4,0\nshort.mp4,0\ngood.mp4,garbage.wav,0\ngood.mp4,1\n"
    )
    pipeline = AudioVideoPipeline(duration=2.0, input_size=32)
    dataset = AudioVideoDataset(csv=tmp_path / "av.csv", pipeline=pipeline)
    with caplog.at_level(logging.WARNING, logger="unveil.datasets"):
        sample = dataset[0]
    assert sample["key"] == "good.mp4" and sample["label"].tolist() == [0.0, 1.0]
    assert dataset.skipped == {
        "missing": 1,
        "decode_error": 2,  # the cut MP4 (decord) and the garbage WAV (soundfile)
        skip_reason(BadSample("no_audio", "")): 1,
        skip_reason(BadSample("short_clip", "")): 1,
    }
    for name in ("missing.mp4", "corrupt.mp4", "no_audio.mp4", "short.mp4"):
        assert str(tmp_path / name) in caplog.text
    assert "no_audio" in caplog.text and "short_clip" in caplog.text

    # With allow_short, the short clip is kept: last frame repeated, audio zero-padded.
    clip = load_av_clip(tmp_path / "short.mp4", duration=2.0, fps=4.0, allow_short=True)
    assert clip.frame_indices.tolist() == [0, 2, 4, 6, 7, 7, 7, 7]
    assert clip.waveform[0, :SR].pow(2).mean().sqrt() > 0.3  # the tone: RMS 0.35
    assert not clip.waveform[0, SR + 1024 :].any()  # zeros past the track (and AAC's last frame)


# ------------------------------------------------------------------------------------------ manifests


def test_av_manifest_forms(tmp_path):
    (tmp_path / "av.csv").write_text(
        "video_path,audio_path,labels\n"
        "# a comment\n"
        "a.mp4\n"
        "b.mp4,b.flac\n"
        "c.mp4,3\n"
        'd.mp4,d.wav,"/m/a,/m/b"\n'
        "e.mp4,/m/a,/m/c\n"
    )
    records = read_av_manifest(tmp_path / "av.csv")
    assert [r.key for r in records] == ["a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4"]
    assert [r.audio for r in records] == [None, tmp_path / "b.flac", None, tmp_path / "d.wav", None]
    assert [r.labels for r in records] == [(), (), ("3",), ("/m/a", "/m/b"), ("/m/a", "/m/c")]
    assert read_av_manifest(tmp_path / "av.csv", root="/data")[0].video.as_posix() == "/data/a.mp4"
    (tmp_path / "bad.csv").write_text("a.wav,b.mp4\n")
    with pytest.raises(ValueError, match="bad.csv:1: the first field must be the video"):
        read_av_manifest(tmp_path / "bad.csv")


# ------------------------------------------------------------------------------------------ generator


@pytest.fixture(scope="module")
def av_root(tmp_path_factory):
    return make_audio_video_folder(
        tmp_path_factory.mktemp("synth-av"),
        num_classes=3,
        train_per_class=2,
        val_per_class=1,
        duration=2.0,
        fps=8,
        size=64,
        progress=False,
    )


def test_synth_audio_video_layout_and_manifests(av_root):
    codec, extension = synth.audio_codec()
    assert (codec, extension) == ("aac", ".mp4")  # this PyAV build encodes AAC
    videos = sorted(av_root.glob(f"*/*/*{extension}"))
    assert len(videos) == 9
    for video in videos:
        assert video.with_suffix(".wav").is_file()
        reader = decord.VideoReader(str(video), ctx=decord.cpu(0), num_threads=1)
        assert len(reader) == 16 and reader[0].shape == (64, 64, 3)
        audio_reader = decord.AudioReader(str(video), sample_rate=SR, mono=True)  # decord reads it too
        assert audio_reader.shape[1] >= 2 * SR
    classes = read_class_index(av_root / "class_labels_indices.csv")
    assert classes.names == tuple(synth.class_names(3))
    assert (av_root / "classes.txt").read_text().split() == list(classes.names)
    kinetics = (av_root / "train.csv").read_text().splitlines()
    assert len(kinetics) == 6 and kinetics[0] == "train/circle/circle_00000.mp4,0"
    records = read_av_manifest(av_root / "val_av.csv")
    assert [r.audio.suffix for r in records] == [".wav"] * 3
    assert [r.labels for r in records] == [(synth.class_mid(n),) for n in classes.names]
    assert len((av_root / "val_audio.csv").read_text().splitlines()) == 4  # header + 3


def test_synth_audio_video_is_deterministic(av_root, tmp_path):
    kwargs = {"num_classes": 3, "train_per_class": 2, "val_per_class": 1, "duration": 2.0, "progress": False}
    again = make_audio_video_folder(tmp_path / "again", **kwargs)
    other = make_audio_video_folder(tmp_path / "other", seed=1, **kwargs)
    for video in sorted(av_root.rglob("*.mp4"))[:3]:
        relative = video.relative_to(av_root)
        frames = [decord.VideoReader(str(root / relative))[:].asnumpy() for root in (av_root, again, other)]
        assert np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[0], frames[2])
        sounds = [decode_audio(root / relative) for root in (av_root, again, other)]
        assert torch.equal(sounds[0], sounds[1]) and not torch.equal(sounds[0], sounds[2])
        wavs = [(root / relative).with_suffix(".wav").read_bytes() for root in (av_root, again)]
        assert wavs[0] == wavs[1]


def test_synth_sound_follows_the_picture():
    """Each shape's tone starts on the frame where it appears, at the pitch of its colour, and a bounce
    makes it louder."""
    fps, seconds, size = 8, 4.0, 64
    seen_bounce = False
    for seed in range(6):
        rng = np.random.default_rng(seed)
        frames, sound, scene = synth.render_audio_video("circle", rng, size, seconds, fps)
        assert len(frames) == 32 and sound.shape == (64000,)
        for shape in scene:
            # The picture: the colour appears on frame `appear`, not before.
            color = np.array(shape["color"])
            shows = [(np.abs(frame.astype(int) - color).max(-1) <= 6).sum() > 30 for frame in frames]
            assert shows[shape["appear"]] and (shape["appear"] == 0 or not shows[shape["appear"] - 1])
        first = min(shape["appear"] for shape in scene)
        onset = first * SR // fps
        assert not sound[:onset].any() and np.abs(sound[onset + 80 : onset + 400]).max() > 0.05
        # The pitch: alone on screen, a circle is a pure tone at its colour's pitch.
        alone = next(s for s in scene if s["appear"] == first)
        later = min([s["appear"] for s in scene if s is not alone] + [32]) * SR // fps
        segment = sound[onset:later]
        if len(segment) >= SR // 4:
            spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment))))
            peak = np.argmax(spectrum) * SR / len(segment)
            assert abs(peak - alone["pitch"]) < 2 * SR / len(segment), (seed, peak, alone["pitch"])
        for shape in scene:
            for bounce in shape["bounces"]:
                at = bounce * SR // fps
                if at + 800 < len(sound) and at - 800 > shape["appear"] * SR // fps:
                    after, before = np.abs(sound[at : at + 800]).max(), np.abs(sound[at - 800 : at]).max()
                    assert after > 1.5 * before, (seed, bounce)
                    seen_bounce = True
    assert seen_bounce
    # Pitch follows hue: red (hue 0) is the lowest pitch, blue (hue 2/3) four times higher.
    assert synth.color_pitch((255, 0, 0)) == pytest.approx(220.0)
    assert synth.color_pitch((0, 0, 255)) == pytest.approx(880.0)


def test_synth_cli_audiovideo(tmp_path):
    synth.main(
        [
            "audiovideo",
            "--out",
            str(tmp_path / "cli"),
            "--num-classes",
            "2",
            "--train-per-class",
            "1",
            "--val-per-class",
            "0",
            "--duration",
            "1",
            "--size",
            "32",
        ]
    )
    assert len(list((tmp_path / "cli" / "train").rglob("*.mp4"))) == 2
    synth.main(
        [
            "audio",
            "--out",
            str(tmp_path / "a"),
            "--num-classes",
            "2",
            "--train-per-class",
            "1",
            "--val-per-class",
            "0",
            "--duration",
            "1",
            "--audio-format",
            "flac",
        ]
    )
    assert len(list((tmp_path / "a" / "train").rglob("*.flac"))) == 2


# ---------------------------------------------------------------------------------- dataset, module


def test_dataset_folder_and_csv_sources(av_root):
    pipeline = AudioVideoPipeline(duration=1.0, fps=4.0, train=False, input_size=32)
    folder = AudioVideoDataset(av_root, "val", pipeline=pipeline)
    assert len(folder) == 3 and folder.classes.names == tuple(synth.class_names(3))
    assert all(r.audio == r.video.with_suffix(".wav") for r in folder.records)
    track_only = AudioVideoDataset(av_root, "val", audio_from="track", pipeline=pipeline)
    assert all(r.audio is None for r in track_only.records)
    from_csv = AudioVideoDataset(
        csv=av_root / "val_av.csv", class_index=av_root / "class_labels_indices.csv", pipeline=pipeline
    )
    for index in range(3):
        a, b, c = folder[index], track_only[index], from_csv[index]
        assert a["label"].tolist() == c["label"].tolist() and a["label"][index] == 1
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["video"], c["video"])
        assert torch.equal(a["fbank"], c["fbank"])  # same wav
        assert (a["fbank"] - b["fbank"]).abs().mean() < 0.05  # AAC track vs wav: close, not equal
    no_labels = av_root / "nolabels.csv"
    no_labels.write_text("val/circle/circle_00000.mp4\n")
    assert "label" not in AudioVideoDataset(csv=no_labels, pipeline=pipeline)[0]


def test_audio_video_datamodule_batches(av_root):
    module = AudioVideoDataModule(
        root=str(av_root),
        duration=1.0,
        video_fps=4.0,
        input_size=32,
        batch_size=2,
        fbank={"freqm": 4, "timem": 10},
        loader={"num_workers": 0},
    )
    assert module.num_classes == 3
    batch = next(iter(module.train_dataloader()))
    assert batch["video"].shape == (2, 3, 4, 32, 32) and batch["fbank"].shape == (2, 1, 100, 128)
    assert batch["audio_missing"].tolist() == [False, False] and batch["label"].shape == (2, 3)
    assert len(batch["key"]) == 2
    assert sum(len(b["key"]) for b in module.val_dataloader()) == 3

    by_stride = AudioVideoDataModule(
        csv_train=str(av_root / "train_av.csv"),
        class_index=str(av_root / "class_labels_indices.csv"),
        duration=2.0,
        video_fps=None,
        num_frames=4,
        stride=4,
        target_length=256,
        input_size=32,
        batch_size=3,
        missing_audio="zeros",
        loader={"num_workers": 0},
    )
    batch = next(iter(by_stride.train_dataloader()))
    assert batch["video"].shape == (3, 3, 4, 32, 32) and batch["fbank"].shape == (3, 1, 256, 128)
    assert by_stride.val_dataloader() == []


def test_audio_video_datamodule_errors_name_the_argument(av_root):
    root = str(av_root)
    cases = [
        ({}, "set root"),
        ({"root": root, "duration": 0}, "AudioVideoDataModule.duration must be > 0"),
        ({"root": root, "stride": 2}, "AudioVideoDataModule.stride must be null when sampling by rate"),
        ({"root": root, "video_fps": None, "num_frames": 4}, "AudioVideoDataModule.stride must be >= 1"),
        ({"root": root, "video_fps": None, "stride": 2}, "AudioVideoDataModule.num_frames must be >= 1"),
        ({"root": root, "num_frames": 20}, "AudioVideoDataModule.num_frames must be between 1 and 8"),
        ({"root": root, "missing_audio": "drop"}, "AudioVideoDataModule.missing_audio must be 'skip'"),
        ({"root": root, "audio_from": "wav"}, "AudioVideoDataModule.audio_from"),
        ({"root": root, "fbank": {"freqm": -2}}, "AudioVideoDataModule.fbank.freqm"),
        ({"csv_train": "nope.csv"}, "AudioVideoDataModule.csv_train"),
    ]
    for kwargs, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
            AudioVideoDataModule(**kwargs)
        assert "\n" not in str(info.value)


def test_datamodules_build_from_yaml(av_root):
    from jsonargparse import ArgumentParser
    from unveil.datasets import AudioDataModule

    parser = ArgumentParser()
    parser.add_class_arguments(AudioDataModule, "audio")
    parser.add_class_arguments(AudioVideoDataModule, "av")
    config = parser.parse_string(
        f"audio:\n  manifest: {av_root / 'train_audio.csv'}\n  class_index: {av_root / 'class_labels_indices.csv'}\n"
        "  target_length: 400\n  fbank: {freqm: 0, gain: false}\n"
        f"av:\n  root: {av_root}\n  duration: 2.0\n  video_fps: null\n  num_frames: 4\n  stride: 4\n"
        "  missing_audio: zeros\n  crop_scale: [0.3, 1.0]\n"
    )
    built = parser.instantiate_classes(config)
    assert built.audio.target_length == 400 and built.audio.fbank.gain is False and built.audio.num_classes == 3
    assert built.av.video_fps is None and built.av.stride == 4 and built.av.crop_scale == (0.3, 1.0)
    assert built.av.pipeline(train=False).target_length == 200
