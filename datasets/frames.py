"""Videos as frames with presentation times, from a video file or a folder of image frames, read through one
interface (``VideoFrames``; ``open_video`` picks the reader).

Time. Frame ``i`` is shown from ``times[i]`` (seconds from the start of the video stream) until the next
frame's time; ``duration`` is when the last frame ends. These are the presentation times PyAV (FFmpeg)
shows, so an mp4 edit list is honoured. That matters for real downloads: a clip cut from a longer video
with stream copy (``ffmpeg -ss S -c copy``, the way most AudioSet and VGGSound clips were made) keeps the
frames from the keyframe before ``S``, and its edit list tells players to hide them. decord ignores the
edit list: it counts the hidden frames, reports a longer video, gives them negative timestamps and maps
frame indices to the wrong pictures. ``open_video`` therefore decodes a file with decord (fast seeking)
only when decord's timeline agrees with the container's (its first frame at the stream's start, and for
an mp4 with an edit list, the duration the edit list shows), and with PyAV otherwise.

Audio read by ``unveil.datasets.audio.read_audio`` from a video's track is on the same clock: its
``start`` is seconds from the start of the video stream.

Frame folders (DAVIS ``JPEGImages/480p/<video>/00000.jpg``, SA-V frames extracted at 24 fps,
pre-extracted Kinetics ``<class>/<video>/img_00001.jpg``) are videos too: the frames are the folder's
image files in natural order (``2.jpg`` before ``10.jpg``), frame ``i`` shown at ``i / fps``, read lazily.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import av
import decord
import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, read_file

VideoSource = str | Path | bytes | bytearray | memoryview | BinaryIO
"""A video file (path), its bytes or a binary file object, or a folder of frames (path)."""

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
"""Image files that count as frames in a frame folder."""

TIME_TOLERANCE = 1e-4
"""Seconds: a time this close to a frame's presentation time counts as that time. Absorbs float error
(decord's timestamps are float32) and is far below any frame interval."""


class VideoFrames:
    """A video as ``num_frames`` frames with presentation times.

    Attributes:
        times: float64 [num_frames], increasing: when each frame is shown, in seconds from the start of
            the video stream (the first frame is usually at 0).
        duration: seconds from the start of the stream to the end of the last frame.

    Subclasses read the pixels (``_read_sorted``); ``read`` decodes each distinct frame once, in order.
    """

    def __init__(self, times: torch.Tensor, duration: float) -> None:
        if len(times) == 0:
            raise ValueError("a video needs at least one frame")
        self.times = times.to(torch.float64)
        self.duration = float(duration)

    @property
    def num_frames(self) -> int:
        return len(self.times)

    def __len__(self) -> int:
        return self.num_frames

    @property
    def fps(self) -> float:
        """Average frame rate: frames per second of duration."""
        return self.num_frames / self.duration if self.duration > 0 else 0.0

    def frames_at(self, seconds: torch.Tensor) -> torch.Tensor:
        """Index (int64, same shape) of the frame shown at each time: the last frame whose presentation
        time is at or before it (frame 0 for times before the first frame)."""
        seconds = torch.as_tensor(seconds, dtype=torch.float64)
        index = torch.searchsorted(self.times, seconds + TIME_TOLERANCE, right=True) - 1
        return index.clamp_(0, self.num_frames - 1)

    def frame_at(self, seconds: float) -> int:
        """Index of the frame shown at ``seconds`` (``frames_at`` for one time)."""
        return int(self.frames_at(torch.tensor(seconds)))

    def first_frame_from(self, seconds: float) -> int:
        """Index of the first frame shown at or after ``seconds`` (``num_frames`` when there is none)."""
        return int(
            torch.searchsorted(self.times, torch.tensor(seconds - TIME_TOLERANCE, dtype=torch.float64))
        )

    def read(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """The frames ``indices`` (any order, repeats allowed) as uint8 [len(indices), H, W, 3] RGB.

        Each distinct frame is decoded once, in increasing order (cheap seeks), then gathered.
        """
        indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= self.num_frames):
            raise IndexError(f"frame indices {indices.tolist()} outside [0, {self.num_frames})")
        unique, position = torch.unique(indices, return_inverse=True)  # sorted
        return self._read_sorted(unique.tolist())[position]

    def _read_sorted(self, indices: list[int]) -> torch.Tensor:  # pragma: no cover - overridden
        """The frames ``indices`` (sorted, distinct): uint8 [len(indices), H, W, 3]."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ frame folders


def _natural_key(name: str) -> list:
    """Sort key putting ``frame2.jpg`` before ``frame10.jpg``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frames(folder: str | Path, extensions: Sequence[str] = FRAME_EXTENSIONS) -> list[Path]:
    """The frame files of ``folder`` (extensions ``extensions``, hidden files left out), in natural order.

    Raises ``FileNotFoundError`` when ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a directory")
    frames = [
        path
        for path in folder.iterdir()
        if not path.name.startswith(".") and path.suffix.lower() in extensions and path.is_file()
    ]
    return sorted(frames, key=lambda path: _natural_key(path.name))


class FrameFolder(VideoFrames):
    """A video stored as a folder of image frames at ``fps`` frames per second.

    Frame ``i`` is ``paths[i]`` (``list_frames``: natural order), shown at ``i / fps``. Nothing is decoded
    until asked: ``read_frame(i)`` decodes one file, ``read(indices)`` several.

    Raises ``FileNotFoundError`` when the folder is missing or holds no frame.
    """

    def __init__(self, folder: str | Path, fps: float = 30.0) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.folder = Path(folder)
        self.paths = list_frames(self.folder)
        if not self.paths:
            raise FileNotFoundError(f"no frames ({'/'.join(FRAME_EXTENSIONS)}) in {str(self.folder)!r}")
        count = len(self.paths)
        super().__init__(torch.arange(count, dtype=torch.float64) / fps, count / fps)

    def read_frame(self, index: int) -> torch.Tensor:
        """Frame ``index``: uint8 [H, W, 3] RGB."""
        image = decode_image(read_file(str(self.paths[index])), mode=ImageReadMode.RGB)  # [3, H, W]
        return image.permute(1, 2, 0)

    def _read_sorted(self, indices: list[int]) -> torch.Tensor:
        frames = [self.read_frame(index) for index in indices]
        shapes = {tuple(frame.shape) for frame in frames}
        if len(shapes) > 1:
            raise RuntimeError(f"{str(self.folder)!r}: frames of different sizes {sorted(shapes)}")
        return torch.stack(frames)


# -------------------------------------------------------------------------------------------- video files


def _open_input(source: str | bytes):
    """What decord and PyAV open: a path string, or a fresh file object over the bytes."""
    return io.BytesIO(source) if isinstance(source, bytes) else source


class DecordVideo(VideoFrames):
    """A video file read with decord (CPU, one thread): seeks to the keyframe before the first wanted frame.

    Only for files whose timeline decord reads right (``open_video`` checks): times are decord's
    timestamps, counted from its first frame.
    """

    def __init__(self, reader: decord.VideoReader, stamps: np.ndarray) -> None:
        self.reader = reader
        stamps = torch.from_numpy(np.asarray(stamps, dtype=np.float64))  # [N, 2]: shown from, until
        super().__init__(stamps[:, 0] - stamps[0, 0], float(stamps[-1, 1] - stamps[0, 0]))

    def _read_sorted(self, indices: list[int]) -> torch.Tensor:
        batch = self.reader.get_batch(indices)  # [n, H, W, 3] uint8
        # decord's output type is process-wide state: an NDArray, or a torch tensor once any code (the official
        # SAM 2 loader, for one) has called decord.bridge.set_bridge('torch').
        return batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch.asnumpy())


class PyAVVideo(VideoFrames):
    """A video file read with PyAV, by presentation time, honouring edit lists.

    Opening reads the packet headers of the video stream (no decoding): the frames are the packets FFmpeg
    does not mark for discarding, in presentation order. ``read`` seeks to the keyframe before the first
    wanted frame and decodes forward, matching frames by presentation timestamp.
    """

    def __init__(self, source: str | bytes) -> None:
        self.source = source
        with av.open(_open_input(source)) as container:
            if not container.streams.video:
                raise RuntimeError("the file has no video stream")
            stream = container.streams.video[0]
            time_base, rate = stream.time_base, stream.average_rate or stream.guessed_rate
            shown, ends = [], []
            for packet in container.demux(stream):
                if packet.pts is None or packet.is_discard:
                    continue
                shown.append(packet.pts)
                ends.append(packet.pts + (packet.duration or 0))
            origin = stream.start_time if stream.start_time is not None else min(shown, default=0)
        if not shown:
            raise RuntimeError("the video stream holds no frame")
        self.pts = sorted(shown)
        times = torch.tensor([(pts - origin) * time_base for pts in self.pts], dtype=torch.float64)
        end = float((max(ends) - origin) * time_base)
        if end <= float(times[-1]):  # packets without durations: give the last frame an average one
            if len(times) > 1:
                end = float(times[-1]) + float(times[-1] - times[0]) / (len(times) - 1)
            else:
                end = float(times[-1]) + (1 / float(rate) if rate else 1 / 30)
        super().__init__(times, end)

    def _decode(self, indices: list[int], seek: bool) -> list[np.ndarray | None]:
        wanted = {self.pts[index]: slot for slot, index in enumerate(indices)}
        last = self.pts[indices[-1]]
        frames: list[np.ndarray | None] = [None] * len(indices)
        remaining = len(indices)
        with av.open(_open_input(self.source)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # DataLoader workers decode in parallel already
            if seek:
                container.seek(self.pts[indices[0]], stream=stream, backward=True)
            for frame in container.decode(stream):
                slot = wanted.get(frame.pts)
                if slot is not None and frames[slot] is None:
                    frames[slot] = frame.to_ndarray(format="rgb24")  # [H, W, 3]
                    remaining -= 1
                if remaining == 0 or (frame.pts is not None and frame.pts > last):
                    break
        return frames

    def _read_sorted(self, indices: list[int]) -> torch.Tensor:
        frames = self._decode(indices, seek=indices[0] > 0)
        if any(frame is None for frame in frames) and indices[0] > 0:
            frames = self._decode(indices, seek=False)  # a seek that landed past a frame: from the start
        missing = [index for index, frame in zip(indices, frames) if frame is None]
        if missing:
            raise RuntimeError(f"frames {missing} of {self.num_frames} did not decode")
        return torch.from_numpy(np.stack(frames))


# An mp4/mov (ISO base media file) starts with one of these boxes.
_ISO_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")


def _boxes(data: bytes, start: int, end: int):
    """The ISO boxes in ``data[start:end]``: ``(type, payload start, payload end)``."""
    while start + 8 <= end:
        size, kind = int.from_bytes(data[start : start + 4], "big"), data[start + 4 : start + 8]
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[start + 8 : start + 16], "big"), 16
        elif size == 0:
            size = end - start
        if size < header or start + size > end:
            raise ValueError(f"malformed box {kind!r}")
        yield kind, start + header, start + size
        start += size


def _read_moov(source: str | bytes) -> bytes | None:
    """The payload of an ISO file's ``moov`` box (skipping ``mdat`` without reading it), or None when
    ``source`` is not an ISO file or has no ``moov``."""
    stream = open(source, "rb") if isinstance(source, str) else io.BytesIO(source)  # noqa: SIM115
    with stream:
        first = True
        while True:
            header = stream.read(16)
            if len(header) < 8:
                return None
            size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if first and kind not in _ISO_FIRST_BOXES:
                return None
            first = False
            length = 8
            if size == 1:
                size, length = int.from_bytes(header[8:16], "big"), 16
            if kind == b"moov":
                stream.seek(length - len(header), io.SEEK_CUR)
                payload = stream.read(size - length) if size else stream.read()
                if size and len(payload) < size - length:
                    raise ValueError("truncated moov box")
                return payload
            if size == 0 or size < length:
                return None
            stream.seek(size - len(header), io.SEEK_CUR)


def _edit_list_duration(source: str | bytes) -> float | None:
    """Seconds the first video track of an mp4/mov shows, by its edit list: the sum of its edits' durations
    (empty edits, which delay the track, left out). None when the file is not ISO, or its video track has
    no edit list. Reads only the box headers and the ``moov`` box: a fraction of a millisecond.

    Raises ``ValueError`` for a malformed header."""
    moov = _read_moov(source)
    if moov is None:
        return None
    timescale, duration = None, None
    for kind, start, end in _boxes(moov, 0, len(moov)):
        if kind == b"mvhd":  # the movie time scale, in which edit durations are counted
            offset = start + (20 if moov[start] == 1 else 12)
            timescale = int.from_bytes(moov[offset : offset + 4], "big")
        elif kind == b"trak" and duration is None:
            handler, edits = None, None
            for inner, inner_start, inner_end in _boxes(moov, start, end):
                if inner == b"mdia":
                    for leaf, leaf_start, _ in _boxes(moov, inner_start, inner_end):
                        if leaf == b"hdlr":
                            handler = moov[leaf_start + 8 : leaf_start + 12]
                elif inner == b"edts":
                    for leaf, leaf_start, leaf_end in _boxes(moov, inner_start, inner_end):
                        if leaf == b"elst":
                            edits = _edit_entries(moov[leaf_start:leaf_end])
            if handler == b"vide":
                if edits is None:
                    return None
                duration = sum(length for length, media_time in edits if media_time != -1)
    if not duration:  # no video track, or edits of duration 0 (fragmented files: "all of it")
        return None
    if not timescale:
        raise ValueError("no movie time scale")
    return duration / timescale


def _edit_entries(elst: bytes) -> list[tuple[int, int]]:
    """``(segment duration, media time)`` of each entry of an ``elst`` payload (media time -1: empty)."""
    version, count = elst[0], int.from_bytes(elst[4:8], "big")
    width = 8 if version == 1 else 4
    entry = 2 * width + 4
    if 8 + count * entry > len(elst):
        raise ValueError("truncated edit list")
    return [
        (
            int.from_bytes(elst[at : at + width], "big"),
            int.from_bytes(elst[at + width : at + 2 * width], "big", signed=True),
        )
        for at in range(8, 8 + count * entry, entry)
    ]


def _declared_duration(source: str | bytes) -> float | None:
    """How long the video stream is shown per its container, edit lists applied: read from the mp4/mov
    header (``_edit_list_duration``), or, when that is malformed, as PyAV reports it. None for files
    without edit lists (other containers carry none)."""
    try:
        return _edit_list_duration(source)
    except ValueError:
        with av.open(_open_input(source)) as container:
            stream = container.streams.video[0]
            return None if stream.duration is None else float(stream.duration * stream.time_base)


def open_video(source: VideoSource, frames_fps: float = 30.0) -> VideoFrames:
    """Open a video for reading by presentation time.

    Args:
        source: a video file (path), its bytes or a binary file object; or a folder of frames (path),
            read as a ``FrameFolder`` at ``frames_fps``.
        frames_fps: frame rate of frame folders (files carry their own).

    Returns a ``DecordVideo`` when decord's timeline agrees with the container's (its first frame at the
    start of the stream, and, for an mp4/mov with an edit list, the duration the edit list shows within
    half a frame), else a ``PyAVVideo``: edit lists that hide frames (stream-copy cuts) make decord count
    frames that are never shown. The check reads decord's index and the mp4 header, no pixels.

    Raises ``FileNotFoundError`` for a missing path, and the decoders' errors (``DECORDError``,
    ``av.FFmpegError``, ``RuntimeError``) for files that do not decode.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return FrameFolder(path, frames_fps)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {str(source)!r}")
        source = str(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        source = bytes(source)
    else:
        source = source.read()  # a file object: decord and PyAV each need their own reader
    reader = decord.VideoReader(_open_input(source), ctx=decord.cpu(0), num_threads=1)
    if len(reader) == 0:
        raise RuntimeError("the video has no frames")
    stamps = reader.get_frame_timestamp(np.arange(len(reader))).astype(np.float64)  # [N, 2] seconds
    half_frame = 0.5 * (stamps[-1, 1] - stamps[0, 0]) / len(reader)
    declared = _declared_duration(source)
    # decord's times count from the stream's start: a first frame before it is a frame the edit list hides.
    agrees = abs(stamps[0, 0]) <= half_frame and (
        declared is None or abs((stamps[-1, 1] - stamps[0, 0]) - declared) <= half_frame
    )
    return DecordVideo(reader, stamps) if agrees else PyAVVideo(source)
