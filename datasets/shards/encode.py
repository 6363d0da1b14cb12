"""How ``make_shards`` stores one sample: its tar members (media bytes, ``cls``, ``json``), optionally
re-encoded (``EncodeOptions``)."""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from decord._ffi.base import DECORDError
from PIL import Image
from unveil.datasets.common import (
    skip_reason,
)
from unveil.datasets.frames import open_video
from unveil.datasets.shards.samples import _video_file
from unveil.datasets.shards.sources import ShardItem
from unveil.datasets.skips import BadSample

_TAR_BLOCK = 512


@dataclass(frozen=True)
class EncodeOptions:
    """How ``make_shards`` stores each sample.

    Attributes:
        jpeg_quality: re-encode images as JPEG at this quality (default: copy the file's bytes).
        max_side: shrink images whose longer side exceeds this (bicubic), then re-encode as JPEG.
        short_side: re-encode videos (H.264 through PyAV) with their shorter side scaled down to this;
            the audio track is copied as is.
        video_crf: H.264 quality of re-encoded videos (lower is better).
        verify: decode every image (open every video) while writing, and skip those that fail.
    """

    jpeg_quality: int | None = None
    max_side: int | None = None
    short_side: int | None = None
    video_crf: int = 23
    verify: bool = True


def _tar_size(fields: dict[str, bytes]) -> int:
    """Bytes a sample takes in a tar: a 512-byte header per member plus its data padded to 512."""
    return sum(_TAR_BLOCK + math.ceil(len(data) / _TAR_BLOCK) * _TAR_BLOCK for data in fields.values())


def _tar_file_size(content: int) -> int:
    """Size of a tar file holding ``content`` bytes of members: plus two end blocks, padded to a record."""
    return math.ceil((content + 2 * _TAR_BLOCK) / tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _encode_image(item: ShardItem, options: EncodeOptions) -> dict[str, bytes]:
    data = item.path.read_bytes()
    suffix = item.path.suffix.lower().lstrip(".")
    media, extra = ("jpg" if suffix in ("jpg", "jpeg") else suffix), {}
    if options.verify or options.jpeg_quality is not None or options.max_side is not None:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")  # full decode: a truncated file raises here
        if options.max_side is not None and max(image.size) > options.max_side:
            scale = options.max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        if options.jpeg_quality is not None or options.max_side is not None:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=options.jpeg_quality or 90)
            data, media = buffer.getvalue(), "jpg"
        extra = {"width": image.width, "height": image.height}
    meta = {"key": item.key, "label": item.label, "source": str(item.path), **item.meta, **extra}
    return {media: data, "cls": str(item.label).encode(), "json": json.dumps(meta).encode()}


def reencode_video(data: bytes, short_side: int, crf: int = 23) -> tuple[bytes, float, int]:
    """Re-encode a video's bytes as an H.264 MP4 whose shorter side is at most ``short_side`` (even sizes,
    aspect kept, constant frame rate), copying its audio track. Returns ``(mp4 bytes, fps, frames)``.

    The frames are those PyAV shows (edit lists honoured), and the video keeps its start time on the
    source's clock (to the nearest frame), so a video that starts after its audio stays in step with it."""
    source = av.open(io.BytesIO(data))
    output_buffer = io.BytesIO()
    try:
        video_in = source.streams.video[0]
        audio_in = source.streams.audio[0] if source.streams.audio else None
        fps = Fraction(video_in.average_rate or video_in.guessed_rate or 25)
        width, height = video_in.codec_context.width, video_in.codec_context.height
        scale = min(1.0, short_side / min(width, height))
        out_width, out_height = (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))
        with av.open(output_buffer, mode="w", format="mp4") as output:
            video_out = output.add_stream(
                "libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps
            )
            video_out.width, video_out.height, video_out.pix_fmt = out_width, out_height, "yuv420p"
            video_out.options = {"crf": str(crf), "preset": "veryfast"} if video_out.name == "libx264" else {}
            audio_out = output.add_stream_from_template(audio_in) if audio_in is not None else None
            frames, first = 0, None
            streams = [video_in] + ([audio_in] if audio_in is not None else [])
            for packet in source.demux(*streams):
                if packet.stream.type == "audio":
                    if packet.dts is not None:
                        packet.stream = audio_out
                        output.mux(packet)
                    continue
                for frame in packet.decode():
                    if first is None:  # where the video starts on the source's clock, in frames
                        first = max(0, round((frame.time or 0.0) * fps))
                    frame = frame.reformat(width=out_width, height=out_height, format="yuv420p")
                    # Constant frame rate: frame i is shown at (first + i) / fps.
                    frame.pts, frame.time_base = first + frames, 1 / fps
                    output.mux(video_out.encode(frame))
                    frames += 1
            output.mux(video_out.encode())
    finally:
        source.close()
    return output_buffer.getvalue(), float(fps), frames


def _encode_video(item: ShardItem, options: EncodeOptions) -> dict[str, bytes]:
    if item.path.is_dir():
        raise BadSample("decode_error", "a folder of frames: shards hold video files (encode it as an mp4)")
    data = item.path.read_bytes()
    media = item.path.suffix.lower().lstrip(".")
    if options.short_side is not None:
        data, fps, num_frames = reencode_video(data, options.short_side, options.video_crf)
        media = "mp4"
        duration = num_frames / fps if fps and num_frames else None
    else:
        try:
            with _video_file(data, "." + media) as path:
                video = open_video(path)  # by presentation time: what the reader will see
                fps, num_frames, duration = video.fps, video.num_frames, video.duration
        except (RuntimeError, DECORDError, av.FFmpegError):
            if options.verify:
                raise
            # Unverified: stored as is; the reader skips it if it is bad.
            fps, num_frames, duration = None, None, None
    meta = {
        "key": item.key,
        "label": item.label,
        "source": str(item.path),
        "fps": fps,
        "num_frames": num_frames,
        "duration": duration,
        **item.meta,
    }
    return {media: data, "cls": str(item.label).encode(), "json": json.dumps(meta).encode()}


def _encode_audio(item: ShardItem, options: EncodeOptions) -> dict[str, bytes]:
    from unveil.datasets.audio import decode_audio

    data = item.path.read_bytes()
    if options.verify:
        decode_audio(data)  # raises for missing, empty or undecodable audio
    meta = {"key": item.key, "labels": list(item.label), "source": str(item.path)}  # type: ignore[arg-type]
    return {item.path.suffix.lower().lstrip("."): data, "json": json.dumps(meta).encode()}


def _encode_audio_video(item: ShardItem, options: EncodeOptions) -> dict[str, bytes]:
    from unveil.datasets.audio import read_audio

    audio_path = item.meta.get("audio")
    fields = _encode_video(ShardItem(item.path, -1, item.key), options)  # mp4 (re-encoded: track copied)
    meta = json.loads(fields.pop("json"))
    fields.pop("cls")
    if audio_path is not None:
        audio = Path(audio_path).read_bytes()  # a missing file listed in the manifest raises here
        if options.verify:
            read_audio(audio)
        fields[Path(audio_path).suffix.lower().lstrip(".")] = audio
    meta.update(labels=list(item.label), audio_source=audio_path)  # type: ignore[arg-type]
    del meta["label"]
    fields["json"] = json.dumps(meta).encode()
    return fields


_ENCODERS: dict[str, Callable[[ShardItem, EncodeOptions], dict[str, bytes]]] = {
    "images": _encode_image,
    "videos": _encode_video,
    "audio": _encode_audio,
    "audio-video": _encode_audio_video,
    "coco": _encode_image,  # detection (issue 14): the image, its annotations in the json entry
}


def _encode_or_skip(encode: Callable[[ShardItem], dict[str, bytes]], item: ShardItem) -> tuple[str, object]:
    """``("ok", encode(item))`` or ``("skip", (reason, detail))``; runs in a pool worker, so it never raises
    for a bad file."""
    try:
        return "ok", encode(item)
    except Exception as error:  # noqa: BLE001 - any failure to read or decode a source file skips it
        return "skip", (skip_reason(error), f"{type(error).__name__}: {error}")
