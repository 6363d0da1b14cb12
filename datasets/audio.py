"""Audio for AudioMAE/MAViL: decoding (wav/flac with soundfile, the audio track of a video with PyAV, from
paths or bytes), the AudioMAE log-mel front end, its training augmentations, ``AudioPipeline`` and
``AudioDataset`` (the multi-label manifests and class index are in ``unveil.datasets.manifests``).

The front end is AudioMAE's (Huang et al. 2022): a mono 16 kHz waveform, mean removed, goes through
``torchaudio.compliance.kaldi.fbank`` (128 mel bins, 25 ms Hanning windows every 10 ms, HTK mel scale, no
energy, no dither); the frames are zero-padded or cropped to ``target_length`` (1024 for 10 s) and normalised
as ``(x - mean) / (2 * std)`` with the dataset statistics (AudioSet: -4.2677393, 4.5689974). A sample is
``{"fbank": float [1, target_length, 128], "label": float [num_classes], "key"}``.

Bit for bit AudioMAE's features only for a 16 kHz mono wav. Elsewhere it differs where AudioMAE has no
counterpart (it reads 16 kHz files with torchaudio and takes them as they are): another rate is resampled to
16 kHz (``torchaudio.functional.resample``), several channels are averaged to mono, and AAC or other
compressed audio (the audio track of an mp4, m4a, mp3) is decoded by PyAV, whose decoder may not give the
samples of the tool that made AudioMAE's files.

Training augmentations, by default those of AudioMAE's AS-2M pretraining (``submit_pretrain_audioset2M.sh``
with ``main_pretrain.py``): no SpecAugment (``--freqm``/``--timem`` 0; 48/192 are its fine-tuning values) and
the gain of ``--roll_mag_aug`` (see ``random_gain``). The circular time shift (``time_shift``) is ours and off
by default.

Mixup is left out: it mixes pairs of samples and their labels, so it belongs to the batch (a collate
function or the LightningModule), and AudioMAE/MAViL pretraining do not use it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile
import torch
import torch.nn.functional as F
import torchaudio.functional
import torchaudio.transforms
from torchaudio.compliance import kaldi
from unveil.datasets.common import PipelineDataset, list_class_files
from unveil.datasets.manifests import (  # noqa: F401 - importable from here as before
    AUDIO_EXTENSIONS,
    SOUNDFILE_EXTENSIONS,
    AudioRecord,
    ClassIndex,
    read_audio_manifest,
    read_class_index,
    read_csv_rows,
    resolve_labels,
    split_labels,
)
from unveil.datasets.skips import BadSample

SAMPLE_RATE = 16000
"""Every waveform is resampled to this rate (Hz) before the fbank, as AudioMAE and MAViL train at."""
NUM_MEL_BINS = 128
FRAMES_PER_SECOND = 100
"""fbank frames per second of audio (10 ms frame shift): ``target_length = seconds * 100``."""
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974
"""Mean and standard deviation of AudioSet's fbank values, AudioMAE's defaults for normalisation."""

AudioSource = str | Path | bytes | bytearray | memoryview | BinaryIO
"""A path, the encoded bytes of a file, or a binary file object."""

# Magic numbers of the formats soundfile reads; other bytes go to PyAV.
_SOUNDFILE_MAGIC = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM")


# ---------------------------------------------------------------------------------------------- decoding


@dataclass
class RawAudio:
    """Decoded audio before mixdown and resampling.

    ``samples`` is float32 [channels, N] in [-1, 1] at ``sample_rate``; ``start`` is the time (s) of its
    first sample from the start of the container's video stream (0 for audio files and audio-only ones).
    """

    samples: np.ndarray
    sample_rate: int
    start: float = 0.0


def _is_bytes(source: AudioSource) -> bool:
    return isinstance(source, (bytes, bytearray, memoryview))


def _open_source(source: AudioSource) -> str | BinaryIO:
    """A path string or a file object for ``source``; a missing path raises ``FileNotFoundError``."""
    if _is_bytes(source):
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise FileNotFoundError(f"no such file: {str(source)!r}")
        return str(source)
    return source  # a file object


def _uses_soundfile(source: AudioSource) -> bool:
    if _is_bytes(source):
        return bytes(source[:4]) in _SOUNDFILE_MAGIC
    if isinstance(source, (str, Path)):
        return Path(source).suffix.lower() in SOUNDFILE_EXTENSIONS
    position = source.tell()
    magic = source.read(4)
    source.seek(position)
    return magic in _SOUNDFILE_MAGIC


def _read_soundfile(source: AudioSource) -> RawAudio:
    samples, sample_rate = soundfile.read(_open_source(source), dtype="float32", always_2d=True)
    return RawAudio(np.ascontiguousarray(samples.T), int(sample_rate))  # [N, C] -> [C, N]


def _read_pyav(source: AudioSource) -> RawAudio:
    with av.open(_open_source(source), mode="r") as container:
        if not container.streams.audio:
            raise BadSample("no_audio", "the file has no audio stream")
        stream = container.streams.audio[0]
        # Convert whatever sample format the decoder gives (s16, fltp, ...) to planar float, keeping the
        # rate and channels: torchaudio does the resampling, the same way for every source.
        converter = av.AudioResampler(format="fltp")
        chunks, first_time, sample_rate = [], None, stream.codec_context.sample_rate
        for frame in container.decode(stream):
            if first_time is None and frame.time is not None:
                first_time = frame.time
            sample_rate = frame.sample_rate
            chunks.extend(out.to_ndarray() for out in converter.resample(frame))
        chunks.extend(out.to_ndarray() for out in converter.resample(None))
        start = 0.0
        if first_time is not None and container.streams.video:
            video = container.streams.video[0]
            video_start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
            start = first_time - video_start
    if not chunks:
        raise BadSample("empty_audio", "the audio stream holds no samples")
    return RawAudio(np.concatenate(chunks, axis=1).astype(np.float32, copy=False), int(sample_rate), start)


def read_audio(source: AudioSource) -> RawAudio:
    """Decode all of ``source`` at its own rate and channels (``RawAudio``).

    wav/flac/ogg/aiff (by extension, or by magic number for bytes and file objects) are read with
    soundfile; anything else (the audio track of an mp4/mkv/mov, m4a, mp3, ...) with PyAV.

    Raises ``FileNotFoundError`` (missing path), ``BadSample`` (reason ``no_audio``: no audio stream;
    ``empty_audio``: no samples), and the decoders' own errors (``soundfile.LibsndfileError``,
    ``av.FFmpegError``) on garbage.
    """
    raw = _read_soundfile(source) if _uses_soundfile(source) else _read_pyav(source)
    if raw.samples.shape[1] == 0:
        raise BadSample("empty_audio", "the file holds no samples")
    return raw


def to_mono(raw: RawAudio, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Mix ``raw`` down to mono (mean of the channels) and resample it: float32 [1, N'].

    Resampling is ``torchaudio.functional.resample`` (windowed sinc, its defaults). AudioMAE reads
    AudioSet's 16 kHz files and, for stereo, its fbank call keeps only channel 0; the mean keeps both.
    """
    waveform = torch.from_numpy(raw.samples).mean(dim=0, keepdim=True)  # [1, N]
    if raw.sample_rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, raw.sample_rate, sample_rate)
    return waveform


def decode_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode ``source`` (path, bytes or file object; wav/flac or a video's audio track) to a mono
    float32 waveform [1, N] at ``sample_rate``.

    Errors as in ``read_audio``, plus ``BadSample("empty_audio")`` below one 25 ms fbank window.
    """
    waveform = to_mono(read_audio(source), sample_rate)
    if waveform.shape[-1] < sample_rate * 25 // 1000:
        raise BadSample("empty_audio", f"{waveform.shape[-1]} samples, less than one 25 ms window")
    return waveform


# -------------------------------------------------------------------------------------------- front end


def kaldi_fbank(
    waveform: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = NUM_MEL_BINS,
    frame_shift: float = 10.0,
) -> torch.Tensor:
    """AudioMAE's log-mel filterbank of a mono waveform [1, N]: float [frames, num_mel_bins].

    frames = 1 + (N - 400) // 160 at 16 kHz (25 ms windows, 10 ms apart, no padding at the edges).
    """
    if waveform.ndim == 1:
        waveform = waveform.unsqueeze(0)
    return kaldi.fbank(
        waveform - waveform.mean(),
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=frame_shift,
    )


def pad_or_crop(fbank: torch.Tensor, target_length: int) -> torch.Tensor:
    """Zero-pad at the end, or keep the first ``target_length`` frames, of ``fbank`` [frames, mel]."""
    missing = target_length - fbank.shape[0]
    if missing > 0:
        return F.pad(fbank, (0, 0, 0, missing))
    return fbank[:target_length]


def normalize_fbank(
    fbank: torch.Tensor, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD
) -> torch.Tensor:
    """AudioMAE's normalisation: ``(fbank - mean) / (2 * std)``."""
    return (fbank - mean) / (2 * std)


def random_gain(waveform: torch.Tensor) -> torch.Tensor:
    """What AudioMAE's ``roll_mag_aug`` does: the waveform times a gain drawn from Beta(10, 10) + 0.5 (in
    [0.5, 1.5]).

    Its roll never shifts: ``dataset.py`` rolls the [1, N] array by ``randint(len(waveform))``, and the length
    of the first axis is 1, so the shift is always 0. Only the gain acts.
    """
    return waveform * (torch.distributions.Beta(10.0, 10.0).sample() + 0.5)


def time_shift_waveform(waveform: torch.Tensor) -> torch.Tensor:
    """A circular shift of the waveform [1, N] along time by a uniform random number of samples (not in
    AudioMAE, whose roll does not shift: see ``random_gain``)."""
    shift = int(torch.randint(0, waveform.shape[-1], ()).item())
    return torch.roll(waveform, shifts=shift, dims=-1)


class FbankTransform:
    """Waveform [1, N] (mono, ``sample_rate``) -> normalised fbank float [1, target_length, num_mel_bins].

    Steps, in AudioMAE's order: (train, ``time_shift``) ``time_shift_waveform``; (train, ``gain``)
    ``random_gain``; ``kaldi_fbank``; ``pad_or_crop`` to
    ``target_length``; (train) frequency masking of up to ``freqm`` mel bins and time masking of up to
    ``timem`` frames (``torchaudio.transforms.FrequencyMasking/TimeMasking``, masked values set to 0
    before normalising, as AudioMAE does; 0 disables each); ``normalize_fbank`` with ``mean``/``std``.
    Augmentations draw from torch's global RNG (DataLoader seeds it per worker) and only act when
    ``train`` is True.

    AudioMAE on AudioSet: ``target_length=1024`` (10 s); pretraining ``freqm=0``, ``timem=0``, ``gain=True``
    (AS-2M script); fine-tuning ``freqm=48``, ``timem=192``.
    """

    def __init__(
        self,
        target_length: int = 1024,
        train: bool = False,
        freqm: int = 0,
        timem: int = 0,
        gain: bool = False,
        time_shift: bool = False,
        mean: float = AUDIOSET_MEAN,
        std: float = AUDIOSET_STD,
        num_mel_bins: int = NUM_MEL_BINS,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        if target_length < 1 or freqm < 0 or timem < 0 or std <= 0:
            raise ValueError(
                f"need target_length >= 1, freqm >= 0, timem >= 0, std > 0; got {target_length}, {freqm}, "
                f"{timem}, {std}"
            )
        self.target_length, self.train = target_length, train
        self.freqm, self.timem, self.gain, self.time_shift = freqm, timem, gain, time_shift
        self.mean, self.std = mean, std
        self.num_mel_bins, self.sample_rate = num_mel_bins, sample_rate
        self.frequency_masking = torchaudio.transforms.FrequencyMasking(freqm) if freqm else None
        self.time_masking = torchaudio.transforms.TimeMasking(timem) if timem else None

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.train and self.time_shift:
            waveform = time_shift_waveform(waveform)
        if self.train and self.gain:
            waveform = random_gain(waveform)
        fbank = kaldi_fbank(waveform, self.sample_rate, self.num_mel_bins)  # [frames, mel]
        fbank = pad_or_crop(fbank, self.target_length)  # [L, mel]
        if self.train and (self.frequency_masking or self.time_masking):
            spectrogram = fbank.T.unsqueeze(0)  # [1, mel, L]: torchaudio's maskers take (..., freq, time)
            if self.frequency_masking is not None:
                spectrogram = self.frequency_masking(spectrogram)
            if self.time_masking is not None:
                spectrogram = self.time_masking(spectrogram)
            fbank = spectrogram.squeeze(0).T
        return normalize_fbank(fbank, self.mean, self.std).unsqueeze(0)  # [1, L, mel]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(target_length={self.target_length}, train={self.train}, "
            f"freqm={self.freqm}, timem={self.timem}, gain={self.gain}, time_shift={self.time_shift}, "
            f"mean={self.mean}, std={self.std})"
        )


# ---------------------------------------------------------------------------------------------- dataset


class AudioPipeline:
    """Decode and featurise one audio clip, from a path or a shard member's bytes: ``load`` gives the mono
    waveform at ``sample_rate`` (``decode_audio``), ``to_sample`` ``{"fbank": [1, target_length, 128]}``
    (``transform``, an ``FbankTransform``; augmentations only when it trains)."""

    decode_errors: tuple[type[BaseException], ...] = (
        OSError,
        RuntimeError,
        BadSample,
        av.FFmpegError,
        EOFError,
    )

    def __init__(self, transform: FbankTransform | None = None, sample_rate: int = SAMPLE_RATE) -> None:
        self.transform = transform if transform is not None else FbankTransform(train=False)
        self.sample_rate = sample_rate

    def load(self, source: AudioSource) -> torch.Tensor:
        return decode_audio(source, self.sample_rate)

    def to_sample(self, waveform: torch.Tensor) -> dict:
        return {"fbank": self.transform(waveform)}


class AudioDataset(PipelineDataset):
    """Audio clips as AudioMAE fbanks, from a manifest (CSV or JSON, see ``read_audio_manifest``) or a
    folder ``root/<split>/<class_name>/*.{wav,flac,...}``.

    A sample is ``{"fbank": float [1, target_length, 128], "label": float [num_classes], "key": str}``:
    ``label`` is multi-hot (manifests) or one-hot (folders), over ``self.classes`` (a ``ClassIndex``):
    the ``class_index`` CSV when given, else built from the manifest's labels (``ClassIndex.from_labels``)
    or the class folders. Pass the training set's ``classes`` to the validation set so the two agree.

    Audio is decoded with ``decode_audio`` (mono, resampled to 16 kHz) and turned into features by
    ``FbankTransform`` (augmentations only when ``train``). A file that is missing, empty (no samples, or
    less than one 25 ms window) or fails to decode is skipped (warning naming it and the reason,
    ``self.skipped`` counted) and the next index is returned instead. A silent file is kept: silence is
    valid audio here (the audio-video clips have a missing-audio policy instead).
    """

    def __init__(
        self,
        manifest: str | Path | None = None,
        root: str | Path | None = None,
        split: str = "train",
        class_index: str | Path | ClassIndex | None = None,
        train: bool = True,
        target_length: int = 1024,
        freqm: int = 0,
        timem: int = 0,
        gain: bool = True,
        time_shift: bool = False,
        norm_mean: float = AUDIOSET_MEAN,
        norm_std: float = AUDIOSET_STD,
        transform: FbankTransform | None = None,
        extension: str = ".wav",
        sample_rate: int = SAMPLE_RATE,
        max_retries: int = 10,
        pipeline: AudioPipeline | None = None,
    ) -> None:
        if manifest is not None:
            self.records = read_audio_manifest(manifest, root, extension)
            if isinstance(class_index, ClassIndex):
                self.classes = class_index
            elif class_index is not None:
                self.classes = read_class_index(class_index)
            else:
                self.classes = ClassIndex.from_labels(label for r in self.records for label in r.labels)
            where = str(manifest)
            self.targets = [
                resolve_labels(list(r.labels), self.classes, f"{where} ({r.key})") for r in self.records
            ]
        elif root is not None:
            split_dir = Path(root) / split
            names, files = list_class_files(split_dir, SOUNDFILE_EXTENSIONS)
            self.classes = (
                class_index if isinstance(class_index, ClassIndex) else ClassIndex(tuple(names), tuple(names))
            )
            self.records = [
                AudioRecord(path, (names[label],), path.relative_to(split_dir).as_posix())
                for path, label in files
            ]
            self.targets = [(label,) for _, label in files]
        else:
            raise ValueError("AudioDataset needs a manifest or a root folder")
        if pipeline is None:
            transform = transform or FbankTransform(
                target_length,
                train,
                freqm,
                timem,
                gain,
                time_shift,
                mean=norm_mean,
                std=norm_std,
                sample_rate=sample_rate,
            )
            pipeline = AudioPipeline(transform, sample_rate)
        self.pipeline = pipeline
        self._init_skipping(max_retries)

    @property
    def transform(self) -> FbankTransform:
        return self.pipeline.transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def _source(self, index: int) -> tuple[Path, dict]:
        return self.records[index].path, {}

    def _key(self, index: int) -> str:
        return self.records[index].key

    def _label(self, index: int) -> torch.Tensor:
        return self.classes.multi_hot(self.targets[index])
