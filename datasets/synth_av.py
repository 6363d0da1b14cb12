"""Generated audio and audio-video clips (``unveil synth audiovideo`` and ``unveil synth audio``): the sound of
``unveil.datasets.synth``'s moving shapes. Each shape plays a tone whose pitch is set by its colour and whose
onsets are its appearance and its bounces, with a timbre per class; clips are MP4 files with an AAC track plus
wav/flac copies and Kinetics/AudioSet-style manifests. The names are importable from
``unveil.datasets.synth`` as well.
"""

from __future__ import annotations

import colorsys
import csv
import fractions
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import av
import numpy as np
import soundfile
from PIL import Image
from tqdm import tqdm
from unveil.datasets.synth import (
    _draw_shape,
    _random_background,
    _random_color,
    _sample_rng,
    _splits,
    class_names,
    video_codec,
)

AUDIO_SAMPLE_RATE = 16000
"""Sample rate (Hz) of the generated audio: AudioMAE's and MAViL's rate, so no resampling is needed."""

# Each class sounds different: the relative amplitudes of the harmonics of its tone (1st, 2nd, ...), and
# a tremolo rate in Hz (0: none). The pitch comes from each shape's colour, the onsets from its motion.
_TIMBRES: dict[str, tuple[tuple[float, ...], float]] = {
    "circle": ((1.0,), 0.0),
    "square": ((1.0, 0.0, 0.6, 0.0, 0.4), 0.0),
    "triangle": ((1.0, 0.7, 0.5), 0.0),
    "star": ((1.0, 0.0, 0.0, 0.8, 0.0, 0.6), 0.0),
    "cross": ((1.0,), 7.0),
    "hexagon": ((1.0, 0.5, 0.5, 0.5, 0.5, 0.5), 0.0),
    "ring": ((1.0, 0.6), 11.0),
    "arrow": ((0.5, 1.0, 0.0, 0.0, 0.7), 0.0),
}
_TONE_LEVEL = 0.2  # amplitude of a visible shape's sustained tone
_BOUNCE_LEVEL = 0.5  # extra amplitude of the accent that a bounce triggers
_BOUNCE_DECAY = 0.08  # seconds: time constant of a bounce accent's decay
_ATTACK = 0.005  # seconds: ramp at a tone's onset (a click-free but sharp onset)


def class_mid(name: str) -> str:
    """The AudioSet-style machine id of a synthetic class, e.g. ``/synth/circle``."""
    return f"/synth/{name}"


def color_pitch(color: tuple[int, int, int]) -> float:
    """A shape's tone frequency (Hz) from its colour: the hue in [0, 1) maps to 220..1760 Hz (3 octaves)."""
    hue = colorsys.rgb_to_hsv(*(channel / 255 for channel in color))[0]
    return 220.0 * 2.0 ** (3.0 * hue)


def simulate_scene(
    rng: np.random.Generator, size: int, num_frames: int, fps: float, max_shapes: int = 2
) -> list[dict]:
    """The motion of 1 to ``max_shapes`` shapes, and the events that make their sound.

    Each shape appears at a frame (``appear``; the first within the first quarter of the clip, a second
    one in the middle half), then moves in a straight line, bouncing off the borders, and turns at a
    constant rate. Per shape: ``color``, ``pitch`` (``color_pitch``), ``radius``, ``appear`` (frame
    index), ``positions`` float [num_frames, 2] (x, y), ``angles`` [num_frames], ``bounces`` (indices of
    the first frames drawn after each bounce, while visible).
    """
    shapes = []
    for number in range(int(rng.integers(1, max_shapes + 1))):
        radius = rng.uniform(0.12, 0.2) * size
        speed, heading = rng.uniform(0.15, 0.4) * size / fps, rng.uniform(0, 2 * math.pi)
        low, high = (0, num_frames // 4) if number == 0 else (num_frames // 4, 3 * num_frames // 4)
        color = _random_color(rng)
        position = rng.uniform(radius * 1.2, size - radius * 1.2, size=2)
        velocity = speed * np.array([math.cos(heading), math.sin(heading)])
        angle, spin = rng.uniform(0, 2 * math.pi), rng.uniform(-1.0, 1.0) / fps
        appear = int(rng.integers(low, max(low, high) + 1))
        positions, angles, bounces = np.zeros((num_frames, 2)), np.zeros(num_frames), []
        for frame in range(num_frames):
            positions[frame], angles[frame] = position, angle
            position, bounced = position + velocity, False
            for axis in range(2):  # reflect off the borders, keeping the whole shape inside
                if position[axis] < radius:
                    position[axis] = 2 * radius - position[axis]
                    velocity[axis], bounced = abs(velocity[axis]), True
                elif position[axis] > size - radius:
                    position[axis] = 2 * (size - radius) - position[axis]
                    velocity[axis], bounced = -abs(velocity[axis]), True
            angle += spin
            if bounced and appear <= frame + 1 < num_frames:
                bounces.append(frame + 1)
        shapes.append(
            {
                "color": color,
                "pitch": color_pitch(color),
                "radius": radius,
                "appear": appear,
                "positions": positions,
                "angles": angles,
                "bounces": bounces,
            }
        )
    return shapes


def render_scene_frames(
    kind: str, scene: list[dict], background: np.ndarray, num_frames: int
) -> Iterator[np.ndarray]:
    """Frames (uint8 [size, size, 3]) of a ``simulate_scene`` scene: each shape from its ``appear`` frame."""
    base = Image.fromarray(background)
    for frame in range(num_frames):
        canvas = base.copy()
        for shape in scene:
            if frame >= shape["appear"]:
                center = tuple(shape["positions"][frame])
                _draw_shape(canvas, kind, center, shape["radius"], shape["angles"][frame], shape["color"])
        yield np.asarray(canvas)


def synthesize_scene_audio(
    kind: str, scene: list[dict], duration: float, fps: float, sample_rate: int = AUDIO_SAMPLE_RATE
) -> np.ndarray:
    """The sound of a scene: float32 [round(duration * sample_rate)] in [-1, 1].

    Each visible shape plays a tone at its ``pitch`` with the class's timbre (``_TIMBRES``): silent
    before the shape appears, starting exactly when its first frame is shown (``appear / fps``), with an
    accent that decays after each bounce. So the pitch follows the colour, the onsets follow the picture,
    and the timbre follows the class.
    """
    harmonics, tremolo = _TIMBRES[kind]
    time = np.arange(round(duration * sample_rate), dtype=np.float64) / sample_rate
    sound = np.zeros_like(time)
    for shape in scene:
        onset = shape["appear"] / fps
        since = time - onset
        envelope = _TONE_LEVEL * np.clip(since / _ATTACK, 0.0, 1.0)  # 0 before the onset
        for bounce in shape["bounces"]:
            since_bounce = time - bounce / fps
            envelope += np.where(
                since_bounce >= 0, _BOUNCE_LEVEL * np.exp(-np.maximum(since_bounce, 0) / _BOUNCE_DECAY), 0.0
            )
        tone = np.zeros_like(time)
        for order, weight in enumerate(harmonics, start=1):
            if weight and order * shape["pitch"] < 0.45 * sample_rate:  # no aliasing
                tone += weight * np.sin(2 * math.pi * order * shape["pitch"] * since)
        tone /= sum(harmonics)
        if tremolo:
            tone *= 0.6 + 0.4 * np.cos(2 * math.pi * tremolo * since)
        sound += envelope * tone
    peak = np.abs(sound).max()
    if peak > 0.9:
        sound *= 0.9 / peak
    return sound.astype(np.float32)


def render_audio_video(
    kind: str,
    rng: np.random.Generator,
    size: int,
    duration: float,
    fps: int,
    sample_rate: int = AUDIO_SAMPLE_RATE,
) -> tuple[list[np.ndarray], np.ndarray, list[dict]]:
    """One clip whose sound follows its picture: ``(frames, waveform, scene)``, with ``round(duration *
    fps)`` frames uint8 [size, size, 3] and a float32 waveform of ``round(duration * sample_rate)``
    samples (``simulate_scene``, ``render_scene_frames``, ``synthesize_scene_audio``)."""
    num_frames = round(duration * fps)
    background = _random_background(rng, size)
    scene = simulate_scene(rng, size, num_frames, fps)
    frames = list(render_scene_frames(kind, scene, background, num_frames))
    return frames, synthesize_scene_audio(kind, scene, duration, fps, sample_rate), scene


def audio_codec() -> tuple[str, str]:
    """``(codec, extension)`` of the clips' audio track: AAC in MP4 when this PyAV build can encode AAC,
    else 16-bit PCM in a MOV (MP4 does not carry PCM)."""
    try:
        av.codec.Codec("aac", "w")
    except Exception:  # noqa: BLE001 - PyAV raises different errors for an unknown encoder across versions
        return "pcm_s16le", ".mov"
    return "aac", ".mp4"


def write_av(
    path: str | Path,
    frames: list[np.ndarray],
    fps: int,
    waveform: np.ndarray,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    audio_codec_name: str | None = None,
) -> None:
    """Encode RGB uint8 frames [H, W, 3] (``video_codec()``, yuv420p) and a mono float waveform in [-1, 1]
    (``audio_codec()``: AAC, or PCM in a MOV) into one file, both streams starting at time 0.

    Packets are muxed in time order. AAC's encoder delay is recorded in the MP4 edit list, so decoders
    (PyAV, decord) return the waveform aligned with the frames.
    """
    if not frames:
        raise ValueError("write_av needs at least one frame")
    codec = video_codec()
    audio_codec_name = audio_codec_name or audio_codec()[0]
    samples = np.asarray(waveform, dtype=np.float32).reshape(-1)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream(codec, rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        # x264's macroblock-tree lookahead made the bytes vary from run to run for these tiny frames
        # (seen at 64 and 96 px with an audio stream encoded alongside); without it they repeat.
        video.options = (
            {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0:rc-lookahead=0"}
            if codec == "libx264"
            else {"qscale": "3"}
        )
        video.codec_context.thread_count = 1
        audio = container.add_stream(audio_codec_name, rate=sample_rate)
        audio.layout = "mono"
        if audio_codec_name == "pcm_s16le":
            audio.format = "s16"
        chunk, written = 1024, 0  # AAC's frame size

        def mux_audio_until(end: int) -> None:
            nonlocal written
            while written < min(end, len(samples)):
                block = samples[written : written + chunk]
                if audio_codec_name == "pcm_s16le":
                    array = (np.clip(block, -1, 1) * 32767).round().astype(np.int16)[None]
                    frame = av.AudioFrame.from_ndarray(array, format="s16", layout="mono")
                else:
                    frame = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(block[None]), format="fltp", layout="mono"
                    )
                frame.sample_rate, frame.pts = sample_rate, written
                for packet in audio.encode(frame):
                    container.mux(packet)
                written += len(block)

        for index, array in enumerate(frames):
            # Converted here, single-threaded, and stamped with its time, so the encoder's input is fixed.
            frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p", threads=1)
            frame.pts, frame.time_base = index, fractions.Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
            mux_audio_until(round((index + 1) * sample_rate / fps))
        mux_audio_until(len(samples))
        for stream in (video, audio):
            for packet in stream.encode():
                container.mux(packet)


def write_audio(path: str | Path, waveform: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> None:
    """Write a mono float waveform in [-1, 1] as 16-bit PCM ``.wav`` or ``.flac`` (format from the
    extension). The samples are quantised here, so a wav and a flac of the same waveform hold the same
    integers."""
    pcm = (np.clip(np.asarray(waveform, dtype=np.float64), -1.0, 1.0) * 32767).round().astype(np.int16)
    soundfile.write(str(path), pcm, sample_rate, subtype="PCM_16")


def _write_class_index(out: Path, names: list[str]) -> None:
    """``classes.txt`` and AudioSet's ``class_labels_indices.csv`` format (``index,mid,display_name``)."""
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in names))
    with (out / "class_labels_indices.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([index, class_mid(name), name] for index, name in enumerate(names))


def _write_audio_manifests(out: Path, split: str, rows: list[tuple[str, str]]) -> None:
    """AudioSet-style ``<split>_audio.csv`` (header ``path,labels``) and AudioMAE's ``<split>_audio.json``
    from ``(audio path relative to out, comma-separated mids)`` rows."""
    with (out / f"{split}_audio.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    data = [{"wav": path, "labels": labels} for path, labels in rows]
    (out / f"{split}_audio.json").write_text(json.dumps({"data": data}, indent=1) + "\n")


def _check_audio_args(duration: float, fps: int, sample_rate: int, audio_format: str) -> None:
    if duration <= 0 or fps < 1 or sample_rate < 8000:
        raise ValueError(
            f"need duration > 0, fps >= 1, sample_rate >= 8000; got {duration}, {fps}, {sample_rate}"
        )
    if audio_format not in ("wav", "flac"):
        raise ValueError(f"audio_format must be 'wav' or 'flac', got {audio_format!r}")


def make_audio_video_folder(
    out: str | Path,
    num_classes: int = 4,
    train_per_class: int = 8,
    val_per_class: int = 2,
    duration: float = 4.0,
    fps: int = 8,
    size: int = 64,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    audio_format: Literal["wav", "flac"] = "wav",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write an audio-video dataset whose sound follows the picture, and return ``out``.

    Every clip shows shapes of its class (``render_audio_video``): each shape's colour sets its tone's
    pitch, the class sets the timbre, and a shape's appearance and bounces set the onsets, so audio-video
    correspondence is learnable and retrieval accuracy measurable. Writes:

    - ``out/{train,val}/<class>/<class>_<index>.mp4``: ``round(duration * fps)`` frames of ``size`` x
      ``size`` (a multiple of 32) and a mono AAC track at ``sample_rate`` (``.mov`` with PCM when PyAV
      cannot encode AAC, see ``audio_codec``);
    - next to each clip, ``<class>_<index>.wav`` (or ``.flac``): the same audio, 16-bit PCM;
    - ``out/<split>.csv``: Kinetics style, header-less ``video_path,label`` (label = class index);
    - ``out/<split>_av.csv``: header-less ``video_path,audio_path,label_mid`` (``read_av_manifest``);
    - ``out/<split>_audio.csv`` (header ``path,labels``) and ``out/<split>_audio.json`` (AudioMAE's
      ``{"data": [{"wav", "labels"}]}``): AudioSet style, labels are class mids ``/synth/<class>``;
    - ``out/class_labels_indices.csv`` (``index,mid,display_name``) and ``out/classes.txt``.

    Paths in the manifests are relative to ``out``. The same arguments give identical decoded frames and
    audio.
    """
    out = Path(out)
    names = class_names(num_classes)
    if size < 32 or size % 32:
        raise ValueError(f"size must be a multiple of 32 (decord-safe), got {size}")
    _check_audio_args(duration, fps, sample_rate, audio_format)
    codec, extension = audio_codec()
    out.mkdir(parents=True, exist_ok=True)
    _write_class_index(out, names)
    for split, per_class in _splits(train_per_class, val_per_class):
        kinetics, av_rows, audio_rows = [], [], []
        with tqdm(
            total=num_classes * per_class, desc=f"synth audio-video {split}", disable=not progress
        ) as bar:
            for class_index, name in enumerate(names):
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for item in range(per_class):
                    stem = folder / f"{name}_{item:05d}"
                    rng = _sample_rng(seed, split, class_index, item)
                    frames, waveform, _ = render_audio_video(name, rng, size, duration, fps, sample_rate)
                    video_path, audio_path = stem.with_suffix(extension), stem.with_suffix(f".{audio_format}")
                    write_av(video_path, frames, fps, waveform, sample_rate, codec)
                    write_audio(audio_path, waveform, sample_rate)
                    video_rel, audio_rel = (
                        video_path.relative_to(out).as_posix(),
                        audio_path.relative_to(out).as_posix(),
                    )
                    kinetics.append([video_rel, class_index])
                    av_rows.append([video_rel, audio_rel, class_mid(name)])
                    audio_rows.append((audio_rel, class_mid(name)))
                    bar.update()
        for filename, rows in ((f"{split}.csv", kinetics), (f"{split}_av.csv", av_rows)):
            with (out / filename).open("w", newline="") as file:
                csv.writer(file).writerows(rows)
        _write_audio_manifests(out, split, audio_rows)
    return out


def make_audio_folder(
    out: str | Path,
    num_classes: int = 4,
    train_per_class: int = 16,
    val_per_class: int = 4,
    duration: float = 4.0,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    audio_format: Literal["wav", "flac"] = "wav",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write an audio-only dataset (the sound of ``make_audio_video_folder``'s scenes, no pictures drawn)
    and return ``out``.

    Writes ``out/{train,val}/<class>/<class>_<index>.wav`` (or ``.flac``; mono 16-bit PCM), the AudioSet
    style manifests ``out/<split>_audio.csv`` and ``out/<split>_audio.json`` (labels are class mids), and
    ``out/class_labels_indices.csv`` / ``out/classes.txt``. Deterministic for a given ``seed``.
    """
    out = Path(out)
    names = class_names(num_classes)
    fps = 8  # the scene's time step; only the timing of the onsets depends on it
    _check_audio_args(duration, fps, sample_rate, audio_format)
    out.mkdir(parents=True, exist_ok=True)
    _write_class_index(out, names)
    for split, per_class in _splits(train_per_class, val_per_class):
        rows = []
        with tqdm(total=num_classes * per_class, desc=f"synth audio {split}", disable=not progress) as bar:
            for class_index, name in enumerate(names):
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for item in range(per_class):
                    rng = _sample_rng(seed, split, class_index, item)
                    scene = simulate_scene(rng, 64, round(duration * fps), fps)
                    path = folder / f"{name}_{item:05d}.{audio_format}"
                    write_audio(
                        path, synthesize_scene_audio(name, scene, duration, fps, sample_rate), sample_rate
                    )
                    rows.append((path.relative_to(out).as_posix(), class_mid(name)))
                    bar.update()
        _write_audio_manifests(out, split, rows)
    return out
