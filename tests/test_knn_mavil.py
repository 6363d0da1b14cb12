"""``unveil knn`` on MAViL checkpoints and exports (audio, video, audio-video) over an audio-video folder: the
features are ``ClassifierNet.features`` (what the fine-tuning head sees), the clip sizes fit the checkpoint, and
mistakes stop the command with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_configs import TINY_MAVIL, lightning_checkpoint
from unveil.launch import knn as knn_cli
from unveil.models import MAViL

SYNTH = ("--num_classes", "2", "--train_per_class", "4", "--val_per_class", "2", "--duration", "2.0")


def unveil(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("unveil")
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
    )


def mavil_checkpoint(path: Path, **overrides) -> Path:
    """A pretraining-style ``.ckpt`` of a tiny MAViL (``model.*`` weights and the architecture record)."""
    torch.manual_seed(3)
    return lightning_checkpoint(MAViL(**{**TINY_MAVIL, **overrides}), path)


@pytest.fixture(scope="module")
def av_folder(tmp_path_factory):
    from unveil.datasets.synth_av import make_audio_video_folder

    root = tmp_path_factory.mktemp("knn_av")
    make_audio_video_folder(
        root / "data",
        num_classes=2,
        train_per_class=4,
        val_per_class=2,
        duration=2.0,
        size=32,
        progress=False,
    )
    return root


def run(*argv: str) -> tuple[int, str]:
    """``unveil knn ARGV`` in this process: (exit status, stderr)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = knn_cli.main(list(argv))
    return status, err.getvalue()


def test_features_are_the_fine_tuning_nets_pooled_features(av_folder):
    """The command's numbers equal a kNN over ``ClassifierNet.features`` of the DataModule's eval pipeline."""
    from torch.utils.data import DataLoader
    from unveil.datasets import AudioVideoDataModule, AudioVideoDataset
    from unveil.finetune.backbone import load_pretrained_backbone
    from unveil.finetune.classification import ClassifierNet
    from unveil.finetune.knn import knn_accuracy

    checkpoint = mavil_checkpoint(av_folder / "mavil.ckpt")
    data = av_folder / "data"
    out = av_folder / "knn.json"
    argv = [str(checkpoint), "--data", str(data), "--modality", "audio_video", "--num-workers", "0"]
    status, err = run(*argv, "--k", "1", "3", "--json", str(out))
    assert status == 0, err
    saved = json.loads(out.read_text())
    assert saved["kind"] == "audio_video" and saved["train_samples"] == 8 and saved["val_samples"] == 4

    # by hand: sizes of the checkpoint (64 fbank frames, 4 frames of 32 px, 4 frames at 2 fps = 2 s)
    pipeline = AudioVideoDataModule(
        root=str(data), duration=2.0, num_frames=4, input_size=32, target_length=64
    ).pipeline(train=False)
    net = ClassifierNet(load_pretrained_backbone(checkpoint, modality="audio_video"), 1).eval()

    def features(split):
        batch = next(iter(DataLoader(AudioVideoDataset(str(data), split, pipeline=pipeline), batch_size=16)))
        with torch.no_grad():
            pooled = net.features(batch)
        return F.normalize(F.layer_norm(pooled, pooled.shape[-1:]), dim=1), batch["label"].argmax(dim=1)

    expected = knn_accuracy(*features("train"), *features("val"), 2, ks=(1, 3))
    assert {int(k): v for k, v in saved["top1"].items()} == pytest.approx(expected)


def test_one_line_errors(av_folder, tmp_path):
    checkpoint = mavil_checkpoint(tmp_path / "mavil.ckpt")
    data = str(av_folder / "data")
    cases = {
        (): "give --modality one of audio, video, audio_video",
        ("--modality", "audio", "--target-length", "100"): "--target-length 100 does not fit",
        ("--modality", "video", "--input-size", "64"): "its encoder takes 32 (pixels)",
        ("--modality", "audio", "--config", "quickstart_mavil"): "target_length (data.init_args of --config",
        ("--modality", "audio", "--config", "no_such_recipe"): "no recipe file or shipped recipe",
        ("--modality", "video", "--duration", "4"): "failed to decode",  # 2 s clips, a 4 s window
    }
    for extra, message in cases.items():
        status, err = run(str(checkpoint), "--data", data, "--num-workers", "0", *extra)
        assert status == 2 and message in err, (extra, err)
        assert err.count("\n") == 1 or "skipping" in err, err  # one line (skipped clips warn on their own)
    status, err = run(str(checkpoint), "--data", str(tmp_path / "nowhere"), "--modality", "audio")
    assert status == 2 and "unveil synth audiovideo --out" in err


def test_clip_settings_come_from_the_checkpoint_and_the_recipe():
    model = MAViL(**TINY_MAVIL)
    args = knn_cli.build_parser().parse_args(["x.ckpt", "--data", "d"])
    from unveil.finetune.backbone import AudioVideoBackbone

    assert knn_cli.clip_settings(args, AudioVideoBackbone(model)) == {
        "target_length": 64,
        "num_frames": 4,
        "input_size": 32,
        "duration": 2.0,
    }
    assert knn_cli.clip_settings(args, model.audio_encoder) == {"target_length": 64, "duration": 0.64}
    quickstart = MAViL(**{**TINY_MAVIL, "audio_size": (192, 128)})  # the sizes of quickstart_mavil
    args = knn_cli.build_parser().parse_args(["x.ckpt", "--data", "d", "--config", "quickstart_mavil"])
    settings = knn_cli.clip_settings(args, AudioVideoBackbone(quickstart))
    assert settings["duration"] == 2.0 and settings["video_fps"] == 2.0 and settings["target_length"] == 192


README = (
    "knn",
    "runs/quickstart_mavil/stage1/checkpoints/last.ckpt",
    "--data",
    "data/mavil_av",
    "--modality",
    "audio",
    "--config",
    "quickstart_mavil",
)
"""The README's command (a stage-1 checkpoint of quickstart_mavil's sizes stands in for the trained one)."""


@pytest.mark.slow  # about a minute: the data and five CLI runs
def test_unveil_knn_mavil_command(tmp_path):
    """The README's command through the console script, its random-init row, the audio export (same numbers
    as the .ckpt's audio encoder), and a stage-2 .ckpt fused."""
    made = unveil("synth", "audiovideo", "--out", "data/mavil_av", *SYNTH, "--size", "32", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    folder = tmp_path / "runs/quickstart_mavil/stage1/checkpoints"
    folder.mkdir(parents=True)
    quickstart = {"audio_size": (192, 128)}  # quickstart_mavil's fbank; frames and frame size as TINY_MAVIL
    checkpoint = mavil_checkpoint(folder / "last.ckpt", **quickstart)
    result = unveil(*README, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(audio)" in result.stdout and "8 train -> 4 val, 2 classes" in result.stdout
    assert "k=200" in result.stdout

    fast = ("--num-workers", "0", "--k", "1", "3")
    result = unveil(*README, *fast, "--json", "ckpt.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    random = unveil(*README, *fast, "--random-init", cwd=tmp_path)
    assert random.returncode == 0 and "random init" in random.stdout, random.stderr[-2000:]

    exported = unveil("export", str(checkpoint), "--format", "unveil", "--out", "mavil.pt", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    audio_export = ("knn", "mavil.audio.pt", "--data", "data/mavil_av", "--config", "quickstart_mavil")
    result = unveil(*audio_export, *fast, "--json", "export.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt, export = (json.loads((tmp_path / f"{n}.json").read_text())["top1"] for n in ("ckpt", "export"))
    assert ckpt == export

    mavil_checkpoint(tmp_path / "stage2.ckpt", target_dim=32, **quickstart)
    stage2 = ("knn", "stage2.ckpt", "--data", "data/mavil_av", "--modality", "audio_video")
    result = unveil(*stage2, "--config", "quickstart_mavil", *fast, cwd=tmp_path)
    assert result.returncode == 0 and "(audio_video)" in result.stdout, result.stderr[-2000:]
