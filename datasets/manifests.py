"""Manifests and class indices of the labelled sources: AudioSet-style multi-label CSV/JSON manifests
(audio), audio-video manifests ``video[,audio][,labels...]``, and the ``ClassIndex`` that maps label
strings (mids, names or indices) to class indices."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif")
"""Audio files read with soundfile; every other file (mp4, mkv, mov, m4a, mp3, ...) is read with PyAV."""
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + (".mp3", ".m4a", ".aac", ".opus")
"""Extensions that mark a file as audio-only (manifests, folder scanning)."""

# ---------------------------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class ClassIndex:
    """The classes of a multi-label dataset, in label order: AudioSet's ``class_labels_indices.csv``.

    A label written in a manifest is matched against ``mids`` (``/m/09x0r``), then ``names``
    (``Speech``), then read as an integer index.
    """

    mids: tuple[str, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.mids)

    def index(self, label: str) -> int:
        label = label.strip()
        lookup = self._lookup()
        if label in lookup:
            return lookup[label]
        if label.lstrip("-").isdigit() and 0 <= int(label) < len(self):
            return int(label)
        raise KeyError(label)

    def _lookup(self) -> dict[str, int]:
        cached = self.__dict__.get("_lookup_cache")
        if cached is None:
            cached = {name: i for i, name in enumerate(self.names)}
            cached.update({mid: i for i, mid in enumerate(self.mids)})  # mids win over names
            object.__setattr__(self, "_lookup_cache", cached)
        return cached

    def multi_hot(self, indices: Iterable[int]) -> torch.Tensor:
        """float32 [num_classes] with ones at ``indices``."""
        target = torch.zeros(len(self), dtype=torch.float32)
        target[list(indices)] = 1.0
        return target

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> ClassIndex:
        """A class index for manifests without one: integer labels give ``0..max``; otherwise the distinct
        labels, sorted, name the classes."""
        distinct = sorted({label for label in labels if label})
        if distinct and all(label.isdigit() for label in distinct):
            names = tuple(str(i) for i in range(max(int(label) for label in distinct) + 1))
            return cls(names, names)
        return cls(tuple(distinct), tuple(distinct))


def read_class_index(path: str | Path) -> ClassIndex:
    """Read a class-index CSV in AudioSet's ``class_labels_indices.csv`` format: a header
    ``index,mid,display_name`` and one row per class (names with commas are quoted). Rows are ordered by
    ``index``, which must run 0..C-1."""
    path = Path(path)
    with path.open(newline="") as file:
        rows = [row for row in csv.reader(file) if row and not row[0].lstrip().startswith("#")]
    if rows and rows[0][0].strip().lower() == "index":
        rows = rows[1:]
    entries = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 3 or not row[0].strip().isdigit():
            raise ValueError(f"{path}: bad class-index row {row!r}; expected 'index,mid,display_name'")
        entries.append((int(row[0]), row[1].strip(), ",".join(row[2:]).strip()))
    entries.sort()
    if [index for index, _, _ in entries] != list(range(len(entries))) or not entries:
        raise ValueError(f"{path}: class indices must run 0..C-1 with no gaps")
    return ClassIndex(tuple(mid for _, mid, _ in entries), tuple(name for _, _, name in entries))


def split_labels(text: str) -> list[str]:
    """``"/m/09x0r,/m/04rlf"`` -> ``["/m/09x0r", "/m/04rlf"]`` (blank items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def resolve_labels(labels: list[str], classes: ClassIndex, where: str) -> tuple[int, ...]:
    """Sorted class indices of ``labels`` (the comma-split items of a manifest's labels field).

    Class names may hold commas (AudioSet's "Male speech, man speaking"), so consecutive items are
    joined back when the joined text is a class (longest run first). An unknown label raises
    ``ValueError`` naming ``where``.
    """
    indices, start = set(), 0
    while start < len(labels):
        match = _longest_class_run(labels, start, classes)
        if match is None:
            raise ValueError(f"{where}: unknown label {labels[start]!r} (not in the class index)")
        index, start = match
        indices.add(index)
    return tuple(sorted(indices))


def _longest_class_run(labels: list[str], start: int, classes: ClassIndex) -> tuple[int, int] | None:
    """``(class index, end)`` of the longest ``labels[start:end]`` that, joined, names a class."""
    for end in range(len(labels), start, -1):
        for separator in (", ", ","):
            try:
                return classes.index(separator.join(labels[start:end])), end
            except KeyError:
                continue
    return None


@dataclass(frozen=True)
class AudioRecord:
    """One audio file of a manifest: its path, its label strings and its key (the path as written)."""

    path: Path
    labels: tuple[str, ...]
    key: str


# First fields that mark a CSV's first row as a header rather than a sample.
_HEADER_FIELDS = {"path", "id", "id_or_path", "file", "filename", "wav", "ytid", "video", "video_path"}


def read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """``(line_number, fields)`` of a manifest CSV (quotes honoured, fields stripped), skipping blank
    lines, ``#`` comments and a header row (first field ``path``, ``id``, ``video_path``, ...)."""
    rows = []
    with path.open(newline="") as file:
        for number, row in enumerate(csv.reader(file, skipinitialspace=True), start=1):
            fields = [field.strip() for field in row]
            if not any(fields) or fields[0].startswith("#"):
                continue
            if not rows and fields[0].lower() in _HEADER_FIELDS:
                continue
            rows.append((number, fields))
    if not rows:
        raise ValueError(f"{path}: the manifest lists no samples")
    return rows


def read_audio_manifest(
    manifest: str | Path, root: str | Path | None = None, extension: str = ".wav"
) -> list[AudioRecord]:
    """Read an audio manifest in either form:

    - **CSV** (AudioSet style): one row ``id_or_path,labels`` per clip, where ``labels`` is a quoted,
      comma-separated list of class mids or names (``clip.wav,"/m/09x0r,/m/04rlf"``); unquoted extra
      fields are read as more labels. An optional header row (``path,labels`` / ``id,labels``), blank
      lines and ``#`` comments are skipped.
    - **JSON** (AudioMAE's ``.json``): ``{"data": [{"wav": path, "labels": "/m/..,/m/.."}, ...]}``.

    A first field with a file extension is a path; one without is an id, read as ``<id><extension>``.
    Relative paths resolve against ``root`` when given, else the manifest's folder. The key is the path
    or id as written.
    """
    manifest = Path(manifest)
    base = Path(root) if root is not None else manifest.parent
    if manifest.suffix.lower() == ".json":
        try:
            entries = json.loads(manifest.read_text())["data"]
            pairs = [(str(entry["wav"]), split_labels(str(entry.get("labels", "")))) for entry in entries]
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{manifest}: not an AudioMAE JSON manifest ({error!r}); expected "
                '{"data": [{"wav": path, "labels": "/m/..,/m/.."}]}'
            ) from None
    else:
        pairs = [(fields[0], split_labels(",".join(fields[1:]))) for _, fields in read_csv_rows(manifest)]
    if not pairs:
        raise ValueError(f"{manifest}: the manifest lists no samples")
    records = []
    for written, labels in pairs:
        relative = written if Path(written).suffix else written + extension
        records.append(AudioRecord(base / relative, tuple(labels), written))
    return records


# ---------------------------------------------------------------------------------------- audio-video


@dataclass(frozen=True)
class AVRecord:
    """One clip of a dataset: its video, its separate audio file (or None: the video's track), its label
    strings and its key (the video path as written, or relative to the split folder)."""

    video: Path
    audio: Path | None
    labels: tuple[str, ...]
    key: str


def read_av_manifest(csv: str | Path, root: str | Path | None = None) -> list[AVRecord]:
    """Parse an audio-video manifest: one header-less row per clip,

    ``video_path[,audio_path][,labels...]``

    - ``audio_path`` is the second field when its extension is an audio one (``.wav``, ``.flac``, ...);
      without it the clip's audio is the video's own track.
    - ``labels`` is the rest of the row: one class (integer index, mid or name), or several, either
      quoted (``"/m/a,/m/b"``) or as separate fields. It may be empty.

    So a Kinetics-style ``path,label`` manifest is read as is. Blank lines, ``#`` comments and a header
    row (first field ``video_path``/``video``/``path``) are skipped. Relative paths resolve against
    ``root`` when given, else the CSV's folder. The key is the video path as written.
    """
    csv = Path(csv)
    base = Path(root) if root is not None else csv.parent
    records = []
    for number, fields in read_csv_rows(csv):
        if Path(fields[0]).suffix.lower() in AUDIO_EXTENSIONS:
            raise ValueError(f"{csv}:{number}: the first field must be the video, got {fields[0]!r}")
        audio = None
        rest = fields[1:]
        if rest and Path(rest[0]).suffix.lower() in AUDIO_EXTENSIONS:
            audio, rest = base / rest[0], rest[1:]
        records.append(AVRecord(base / fields[0], audio, tuple(split_labels(",".join(rest))), fields[0]))
    return records


def _companion_audio(video: Path) -> Path | None:
    """The wav/flac next to ``video`` with the same stem, if there is one."""
    for extension in SOUNDFILE_EXTENSIONS:
        candidate = video.with_suffix(extension)
        if candidate.is_file():
            return candidate
    return None
