"""Audio: decoding (soundfile, PyAV, bytes), mono mixdown and resampling, the bit-exact AudioMAE front end,
its augmentations, AudioSet-style manifests, bad files, the synthetic audio data and the DataModule."""

from __future__ import annotations

import io
import json
import logging
import math

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from unveil.datasets import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    AudioDataModule,
    AudioDataset,
    ClassIndex,
    FbankTransform,
    decode_audio,
    kaldi_fbank,
    make_audio_folder,
    make_audio_video_folder,
    read_audio_manifest,
    read_class_index,
)
from unveil.datasets.audio import pad_or_crop, random_gain, time_shift_waveform
from unveil.datasets.common import skip_reason
from unveil.datasets.skips import BadSample

SR = 16000


def reference_fbank(waveform: torch.Tensor, target_length: int, mean: float, std: float) -> torch.Tensor:
    """AudioMAE's front end written out from its definition: [1, target_length, 128]."""
    waveform = waveform - waveform.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform,
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    frames = fbank.shape[0]
    if frames < target_length:
        fbank = torch.cat([fbank, torch.zeros(target_length - frames, 128)])
    else:
        fbank = fbank[:target_length]
    return ((fbank - mean) / (std * 2)).unsqueeze(0)


def htk_peak_bin(frequency: float, sample_rate: int = SR, bins: int = 128, low: float = 20.0) -> int:
    """Mel bin (kaldi's HTK triangles between 20 Hz and Nyquist) whose centre is nearest ``frequency``."""

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    delta = (mel(sample_rate / 2) - mel(low)) / (bins + 1)
    return round((mel(frequency) - mel(low)) / delta - 1)


def sine(frequency: float, seconds: float, sample_rate: int = SR, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def fft_peak(signal: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(frequency of the largest FFT peak, its amplitude) of a real signal."""
    spectrum = np.abs(np.fft.rfft(signal)) * 2 / len(signal)
    index = int(np.argmax(spectrum))
    return index * sample_rate / len(signal), float(spectrum[index])


# ------------------------------------------------------------------------------------------- front end


@pytest.mark.parametrize("seconds,target_length", [(3.0, 1024), (12.0, 1024), (4.0, 400)])
def test_fbank_is_bit_exact_with_audiomae_front_end(tmp_path, seconds, target_length):
    generator = torch.Generator().manual_seed(1)
    waveform = 0.3 * torch.randn(1, int(seconds * SR), generator=generator) + 0.05  # a DC offset to remove
    expected = reference_fbank(waveform, target_length, AUDIOSET_MEAN, AUDIOSET_STD)
    got = FbankTransform(target_length)(waveform)
    assert got.shape == (1, target_length, 128)
    assert torch.equal(got, expected)

    # The same through a file: a float WAV keeps the samples exactly, and the dataset applies no change.
    path = tmp_path / "clip.wav"
    soundfile.write(path, waveform[0].numpy(), SR, subtype="FLOAT")
    (tmp_path / "m.csv").write_text("clip.wav,0\n")
    sample = AudioDataset(tmp_path / "m.csv", train=False, target_length=target_length)[0]
    assert torch.equal(sample["fbank"], expected)


def test_pad_and_crop_to_target_length():
    fbank = torch.randn(198, 128)  # 2 s
    padded = pad_or_crop(fbank, 400)
    assert padded.shape == (400, 128)
    assert torch.equal(padded[:198], fbank) and not padded[198:].any()
    cropped = pad_or_crop(torch.randn(1198, 128), 1024)
    assert cropped.shape == (1024, 128)
    long = torch.randn(1198, 128)
    assert torch.equal(pad_or_crop(long, 1024), long[:1024])

    # Padding happens before normalisation (AudioMAE): padded frames hold (0 - mean) / (2 * std).
    out = FbankTransform(400)(torch.from_numpy(sine(440, 2.0))[None])
    padding_value = (0 - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    assert torch.allclose(out[0, 198:], torch.full((202, 128), padding_value))
    assert not torch.allclose(out[0, 197], torch.full((128,), padding_value))


def test_normalisation_closed_form_and_per_dataset_statistics():
    waveform = torch.from_numpy(sine(700, 1.0) + sine(2500, 1.0, amplitude=0.1))[None]
    raw = kaldi_fbank(waveform)  # [98, 128]
    out = FbankTransform(98, mean=-1.5, std=3.0)(waveform)[0]
    assert torch.allclose(out, (raw + 1.5) / 6.0)
    # With a dataset's own statistics the features have mean 0 and standard deviation 0.5.
    own = FbankTransform(98, mean=raw.mean().item(), std=raw.std().item())(waveform)[0]
    assert abs(own.mean().item()) < 1e-5 and abs(own.std().item() - 0.5) < 1e-5


def test_fbank_peak_bin_matches_the_mel_scale():
    for frequency in (500.0, 1000.0, 3000.0):
        fbank = kaldi_fbank(torch.from_numpy(sine(frequency, 1.0))[None])
        assert int(fbank.mean(0).argmax()) == htk_peak_bin(frequency), frequency


# ------------------------------------------------------------------------------------------- decoding


def test_stereo_44k_is_mixed_to_mono_and_resampled_to_16k(tmp_path):
    rate, seconds = 44100, 1.0
    stereo = np.stack([sine(1000, seconds, rate), sine(3000, seconds, rate)], axis=1)  # [N, 2]
    soundfile.write(tmp_path / "stereo.wav", stereo, rate, subtype="FLOAT")
    mono = decode_audio(tmp_path / "stereo.wav")
    assert mono.shape == (1, SR) and mono.dtype == torch.float32
    signal = mono[0, 200:-200].numpy()  # away from the resampler's edges
    spectrum = np.abs(np.fft.rfft(signal)) * 2 / len(signal)
    freqs = np.fft.rfftfreq(len(signal), 1 / SR)
    peaks = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert abs(peaks[0] - 1000) < 2 and abs(peaks[1] - 3000) < 2
    # The mixdown is the mean of the channels: each tone keeps half its amplitude.
    for frequency in (1000, 3000):
        assert abs(spectrum[np.argmin(abs(freqs - frequency))] - 0.25) < 0.02
    # ... and the 16 kHz fbank puts the energy in the mel bins of those tones.
    spectrum_mel = kaldi_fbank(mono).mean(0)
    assert int(spectrum_mel[:64].argmax()) == htk_peak_bin(1000)
    assert 64 + int(spectrum_mel[64:].argmax()) == htk_peak_bin(3000)
    # Opposite channels cancel in a mean (a first-channel reader would keep the tone).
    soundfile.write(tmp_path / "opposite.wav", np.stack([stereo[:, 0], -stereo[:, 0]], 1), rate)
    assert decode_audio(tmp_path / "opposite.wav").abs().max() < 1e-3


def test_resampling_is_torchaudio_functional(tmp_path):
    signal = sine(440, 0.5, 22050)
    soundfile.write(tmp_path / "a.wav", signal, 22050, subtype="FLOAT")
    expected = torchaudio.functional.resample(torch.from_numpy(signal)[None], 22050, SR)
    assert torch.equal(decode_audio(tmp_path / "a.wav"), expected)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_decode_from_path_bytes_and_file_object(tmp_path, suffix):
    signal = sine(440, 0.5)
    path = tmp_path / f"a{suffix}"
    soundfile.write(path, signal, SR, subtype="PCM_16")
    from_path = decode_audio(path)
    assert torch.equal(decode_audio(path.read_bytes()), from_path)
    assert torch.equal(decode_audio(io.BytesIO(path.read_bytes())), from_path)
    assert torch.allclose(from_path[0], torch.from_numpy(signal), atol=1 / 32768)


@pytest.fixture(scope="module")
def av_root(tmp_path_factory):
    return make_audio_video_folder(
        tmp_path_factory.mktemp("av"),
        num_classes=2,
        train_per_class=1,
        val_per_class=0,
        duration=2.0,
        fps=8,
        size=32,
        progress=False,
    )


def test_audio_track_of_mp4_matches_the_wav_copy(av_root):
    for video in sorted(av_root.rglob("*.mp4")):
        track = decode_audio(video)  # PyAV, AAC
        wav = decode_audio(video.with_suffix(".wav"))
        assert wav.shape == (1, 2 * SR)
        assert 0 <= track.shape[1] - wav.shape[1] < 1024  # AAC pads its last frame
        track = track[:, : wav.shape[1]]
        snr = 10 * torch.log10(wav.pow(2).sum() / (track - wav).pow(2).sum())
        assert snr > 25, (video, snr)  # lossy, but aligned to the sample: a 1 ms shift gives < 10 dB
        assert torch.equal(decode_audio(video.read_bytes()), decode_audio(video))


# --------------------------------------------------------------------------------------- augmentation


def test_specaugment_gain_and_time_shift_change_the_input_only_in_training():
    waveform = torch.from_numpy(sine(600, 3.0) + sine(2200, 3.0, amplitude=0.2))[None]
    eval_out = FbankTransform(300, train=False, freqm=48, timem=96, gain=True, time_shift=True)(waveform)
    assert torch.equal(eval_out, FbankTransform(300)(waveform))  # no augmentation in evaluation

    masked = FbankTransform(300, train=True, freqm=48, timem=96)(waveform)[0]
    assert not torch.equal(masked, eval_out[0])
    fill = (0 - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)  # masking zeroes the fbank before normalisation
    changed = masked != eval_out[0]
    assert torch.allclose(masked[changed], torch.tensor(fill))
    masked_rows = (masked == fill).all(1).sum()  # frames masked whole (time mask)
    masked_cols = (masked == fill).all(0).sum()  # mel bins masked whole (frequency mask)
    assert masked_rows <= 96 and masked_cols <= 48 and masked_rows + masked_cols > 0

    for option in ("gain", "time_shift"):
        augmented = FbankTransform(300, train=True, **{option: True})(waveform)
        assert not torch.equal(augmented, eval_out), option


def test_time_shift_is_circular_and_gain_is_bounded():
    waveform = torch.randn(1, 500)
    shifted = time_shift_waveform(waveform)
    assert any(torch.equal(shifted, torch.roll(waveform, s, -1)) for s in range(500))
    gains = [random_gain(waveform) / waveform for _ in range(50)]
    assert all(torch.allclose(g, g[0, 0]) for g in gains)  # one gain per clip, no shift
    gains = [g[0, 0].item() for g in gains]
    assert all(0.5 <= g <= 1.5 for g in gains) and np.std(gains) > 0.01


def test_audio_defaults_are_audiomae_pretraining():
    """AudioMAE's AS-2M pretraining (submit_pretrain_audioset2M.sh, main_pretrain.py): no SpecAugment
    (--freqm/--timem default 0), --roll_mag_aug True, which acts only as a gain; the time shift is ours, off."""
    import inspect

    from unveil.datasets import AudioDataModule, AudioDataset, AudioVideoDataModule
    from unveil.datasets.audio_video import AudioVideoPipeline

    for cls in (AudioDataset, AudioDataModule, AudioVideoDataModule, AudioVideoPipeline):
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
        if "fbank" in defaults:  # the DataModules hold them in FbankOptions
            defaults.update(vars(defaults["fbank"]))
        assert (defaults["freqm"], defaults["timem"], defaults["gain"]) == (0, 0, True), cls.__name__
        assert defaults.get("time_shift", False) is False, cls.__name__
    assert "time_shift" not in inspect.signature(AudioVideoPipeline).parameters  # it would break the alignment


# ------------------------------------------------------------------------------------------ manifests


@pytest.fixture
def labelled(tmp_path):
    """Three wavs, an AudioSet class index (names with commas) and a CSV + JSON manifest of them."""
    (tmp_path / "class_labels_indices.csv").write_text(
        "index,mid,display_name\n"
        '0,/m/09x0r,"Speech"\n'
        '1,/m/05zppz,"Male speech, man speaking"\n'
        '2,/m/04rlf,"Music"\n'
    )
    for name in ("a", "b", "c"):
        soundfile.write(tmp_path / f"{name}.wav", sine(300, 0.5), SR)
    (tmp_path / "train.csv").write_text(
        "# AudioSet-style manifest\n"
        "path,labels\n"
        'a.wav,"/m/09x0r,/m/04rlf"\n'
        'b,"Male speech, man speaking"\n'  # an id (-> b.wav) and a display name
        "c.wav,/m/04rlf,Speech\n"  # unquoted: the extra fields are more labels
    )
    data = {"data": [{"wav": "a.wav", "labels": "/m/09x0r,/m/04rlf"}, {"wav": "c.wav", "labels": "/m/04rlf"}]}
    (tmp_path / "train.json").write_text(json.dumps(data))
    return tmp_path


def test_class_index_csv(labelled):
    classes = read_class_index(labelled / "class_labels_indices.csv")
    assert len(classes) == 3 and classes.names[1] == "Male speech, man speaking"
    assert classes.index("/m/04rlf") == 2 and classes.index("Speech") == 0 and classes.index("1") == 1


def test_audioset_csv_and_audiomae_json_give_multi_hot_labels(labelled):
    index = labelled / "class_labels_indices.csv"
    dataset = AudioDataset(labelled / "train.csv", class_index=index, train=False, target_length=64)
    assert len(dataset) == 3 and dataset.num_classes == 3
    labels = torch.stack([dataset[i]["label"] for i in range(3)])
    assert labels.dtype == torch.float32
    assert labels.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert [dataset[i]["key"] for i in range(3)] == ["a.wav", "b", "c.wav"]
    assert dataset.records[1].path == labelled / "b.wav"
    assert dataset[0]["fbank"].shape == (1, 64, 128)

    from_json = AudioDataset(labelled / "train.json", class_index=index, train=False, target_length=64)
    assert [s["label"].tolist() for s in (from_json[0], from_json[1])] == [[1, 0, 1], [0, 0, 1]]
    assert [r.key for r in read_audio_manifest(labelled / "train.json")] == ["a.wav", "c.wav"]


def test_manifest_without_class_index_and_unknown_labels(labelled):
    dataset = AudioDataset(labelled / "train.csv", train=False, target_length=32)
    # Without a class index a name cannot hold a comma: every comma separates two labels.
    assert dataset.classes.names == tuple(
        sorted({"/m/09x0r", "/m/04rlf", "Male speech", "man speaking", "Speech"})
    )
    assert dataset[1]["label"].sum() == 2
    assert ClassIndex.from_labels(["3", "0"]).names == ("0", "1", "2", "3")
    (labelled / "bad.csv").write_text('a.wav,"/m/09x0r,/m/nope"\n')
    with pytest.raises(ValueError, match="bad.csv.*unknown label '/m/nope'"):
        AudioDataset(labelled / "bad.csv", class_index=labelled / "class_labels_indices.csv")
    (labelled / "bad.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="AudioMAE JSON"):
        read_audio_manifest(labelled / "bad.json")


# ------------------------------------------------------------------------------------------ bad files


def test_bad_audio_files_are_skipped_with_key_and_reason(tmp_path, caplog):
    soundfile.write(tmp_path / "good.wav", sine(300, 0.5), SR)
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)  # a header and no samples
    soundfile.write(tmp_path / "blip.wav", np.ones(100, np.float32) * 0.1, SR)  # < one 25 ms window
    (tmp_path / "garbage.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(3000))
    (tmp_path / "noise.flac").write_bytes(np.random.default_rng(1).bytes(3000))
    (tmp_path / "m.csv").write_text(
        "empty.wav,0\nmissing.wav,0\ngarbage.wav,0\nblip.wav,0\nnoise.flac,0\ngood.wav,1\n"
    )
    dataset = AudioDataset(tmp_path / "m.csv", train=False, target_length=50)
    with caplog.at_level(logging.WARNING, logger="unveil.datasets"):
        sample = dataset[0]  # five bad files in a row, then the good one
    assert sample["key"] == "good.wav" and sample["label"].tolist() == [0.0, 1.0]
    expected = {
        skip_reason(BadSample("empty_audio", "")): 2,  # the header-only file and the 100-sample one
        "missing": 1,
        "decode_error": 2,
    }
    assert dataset.skipped == expected
    for name in ("empty.wav", "missing.wav", "garbage.wav", "blip.wav", "noise.flac"):
        assert str(tmp_path / name) in caplog.text
    assert "empty_audio" in caplog.text and "missing" in caplog.text


# ------------------------------------------------------------------------------------------ generator


def test_make_audio_folder_layout_manifests_and_determinism(tmp_path):
    kwargs = {"num_classes": 3, "train_per_class": 2, "val_per_class": 1, "duration": 1.0, "progress": False}
    a = make_audio_folder(tmp_path / "a", seed=5, **kwargs)
    b = make_audio_folder(tmp_path / "b", seed=5, audio_format="flac", **kwargs)
    c = make_audio_folder(tmp_path / "c", seed=6, **kwargs)
    wavs = sorted(a.rglob("*.wav"))
    assert len(wavs) == 9 and len(sorted(b.rglob("*.flac"))) == 9
    for path in wavs:
        samples, rate = soundfile.read(path, dtype="float32")
        assert rate == SR and samples.shape == (SR,) and np.abs(samples).max() > 0.05
        other, _ = soundfile.read(b / path.relative_to(a).with_suffix(".flac"), dtype="float32")
        assert np.array_equal(samples, other)  # same seed: same sound, lossless in both formats
    differs = [
        not np.array_equal(soundfile.read(p)[0], soundfile.read(c / p.relative_to(a))[0]) for p in wavs
    ]
    assert all(differs)
    classes = read_class_index(a / "class_labels_indices.csv")
    assert classes.mids == ("/synth/circle", "/synth/square", "/synth/triangle")
    for manifest in ("train_audio.csv", "train_audio.json"):
        dataset = AudioDataset(a / manifest, class_index=classes, train=False, target_length=100)
        assert len(dataset) == 6
        for i in range(6):
            sample = dataset[i]
            assert sample["label"].argmax().item() == classes.names.index(sample["key"].split("/")[1])


# ----------------------------------------------------------------------------------------- datamodule


def test_audio_datamodule_batches(tmp_path):
    root = make_audio_folder(
        tmp_path / "a", num_classes=2, train_per_class=3, val_per_class=1, duration=1.0, progress=False
    )
    module = AudioDataModule(
        manifest=str(root / "train_audio.csv"),
        class_index=str(root / "class_labels_indices.csv"),
        val_manifest=str(root / "val_audio.json"),
        target_length=128,
        fbank={"freqm": 8, "timem": 16},
        batch_size=2,
        loader={"num_workers": 0},
    )
    assert module.num_classes == 2
    batch = next(iter(module.train_dataloader()))
    assert batch["fbank"].shape == (2, 1, 128, 128) and batch["fbank"].dtype == torch.float32
    assert batch["label"].shape == (2, 2) and batch["label"].sum(1).tolist() == [1.0, 1.0]
    assert len(batch["key"]) == 2
    val = list(module.val_dataloader())
    assert sum(len(b["key"]) for b in val) == 2

    folder = AudioDataModule(root=str(root), target_length=100, batch_size=3, loader={"num_workers": 0})
    assert next(iter(folder.train_dataloader()))["fbank"].shape == (3, 1, 100, 128)
    assert len(folder.val_dataloader()) == 1


def test_audio_datamodule_errors_name_the_argument(tmp_path):
    cases = [
        ({}, "set manifest"),
        ({"manifest": str(tmp_path / "nope.csv")}, "AudioDataModule.manifest: .* does not exist"),
        ({"root": str(tmp_path), "val_split": None}, "AudioDataModule.train_split"),
        ({"manifest": __file__, "fbank": {"freqm": -1}}, "AudioDataModule.fbank.freqm must be >= 0"),
        ({"manifest": __file__, "fbank": {"norm_std": 0.0}}, "AudioDataModule.fbank.norm_std must be > 0"),
        ({"manifest": __file__, "target_length": 0}, "AudioDataModule.target_length"),
        ({"manifest": __file__, "class_index": "nope.csv"}, "AudioDataModule.class_index"),
    ]
    for kwargs, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
            AudioDataModule(**kwargs)
        assert "\n" not in str(info.value)
