"""Every command the README shows, run as a user types it: the ``unveil`` console script in a subprocess, in a fresh
working folder, on small generated data. Overrides only shrink the runs (2 steps, 64 px, batch 4).

Covered elsewhere through the same console script: ``unveil recipes`` (``test_cli.py``). The slow tests (video
shards; audio shards; the MAViL stage 1 → stage 2 chain, stage 2 on audio-video shards, with the MAViL export;
the ``unveil``, ``hiera`` and ``sam2`` exports) run with ``pytest -m slow``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm.models.vision_transformer
import torch

UNVEIL = Path(sys.executable).with_name("unveil")

# Shrink the quickstart: 2 steps at 64 px, batch 4, a validation pass and a picture at every step, no workers.
TINY_IMAGE = (
    "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
    "--data.init_args.batch_size", "4", "--data.init_args.loader.num_workers", "0", "--data.init_args.input_size", "64",
    "--model.init_args.model.init_args.input_size=[64,64]", "--model.init_args.pictures.every_n_steps", "1",
    "--model.init_args.pictures.num_samples", "2",
)


def unveil(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``unveil ARGS`` in ``cwd`` as a user would (with the environment ``env``, default this one's); fail the
    test with its output unless it exits with 0."""
    result = subprocess.run([str(UNVEIL), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env, check=False)
    assert result.returncode == 0, (
        f"`unveil {' '.join(args)}` exited with {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )
    return result


def fresh_folder(data: Path, folder: Path) -> Path:
    """``folder`` with ``data/`` of the synth command linked in: each run writes its own ``runs/``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").symlink_to(data / "data", target_is_directory=True)
    return folder


def checkpoint_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def load_as_printed(stdout: str, cwd: Path) -> list[dict]:
    """Run each block of Python lines that ``unveil export`` prints under "load it into ...:" (the modules they
    name imported, as a user would); returns each block's namespace."""
    import functools

    import hiera  # the official package (dev extra), for --format hiera
    import timm
    import timm.models.hieradet_sam2
    import timm.models.vision_transformer
    import unveil.models.vit
    import unveil.pretrain.checkpoints

    blocks: list[list[str]] = []
    current = None
    for line in stdout.splitlines():
        if line.startswith("load it into"):
            current = []
            blocks.append(current)
        elif current is not None and line.startswith("  "):
            current.append(line[2:])
        else:
            current = None
    assert blocks, stdout
    here, namespaces = Path.cwd(), []
    os.chdir(cwd)  # the printed paths are relative to where the command ran
    try:
        for block in blocks:
            namespace = {"torch": torch, "timm": timm, "hiera": hiera, "unveil": unveil, "functools": functools}
            exec(compile("\n".join(block), "<printed by unveil export>", "exec"), namespace)  # noqa: S102
            namespaces.append(namespace)
    finally:
        os.chdir(here)
    return namespaces


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A fresh folder holding what the README's first command writes: ``data/shapes`` (tiny)."""
    folder = tmp_path_factory.mktemp("readme")
    unveil("synth", "images", "--out", "data/shapes", "--num_classes", "2", "--train_per_class", "8",
           "--val_per_class", "4", "--size", "64", "--progress", "false", cwd=folder)
    return folder


@pytest.fixture(scope="module")
def quickstart(workdir) -> Path:
    """``unveil fit --config quickstart`` (absolute-win position embeddings, for the sam2 export); its run folder."""
    unveil("fit", "--config", "quickstart", *TINY_IMAGE,
           "--model.init_args.model.init_args.abs_win_pos_embed", "true", cwd=workdir)
    (run,) = (workdir / "runs/quickstart").glob("version_*")
    return run


@pytest.fixture(scope="module")
def two_ranks(workdir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``unveil fit --config quickstart --config presets/ddp --trainer.devices 2`` on 2 CPU processes (gloo);
    its run folder and the completed process."""
    folder = fresh_folder(workdir, tmp_path_factory.mktemp("ddp"))
    result = unveil("fit", "--config", "quickstart", "--config", "presets/ddp", "--trainer.devices", "2",
                    "--trainer.accelerator", "cpu", *TINY_IMAGE, cwd=folder)
    (run,) = (folder / "runs/quickstart").glob("version_*")
    return run, result


# ------------------------------------------------------------------------------------------------ fit and friends


def test_fit_quickstart(quickstart):
    assert checkpoint_step(quickstart / "checkpoints/last.ckpt") == 2
    assert (quickstart / "config.yaml").is_file()
    pictures = sorted(p.name for p in (quickstart / "reconstructions").glob("*.png"))
    assert pictures == ["step_000000.png", "step_000001.png", "step_000002.png"]


def test_validate_and_test(workdir, quickstart):
    ckpt = str(quickstart / "checkpoints/last.ckpt")
    args = ("--config", "quickstart", *TINY_IMAGE, "--model.init_args.model.init_args.abs_win_pos_embed", "true",
            "--ckpt_path", ckpt)
    for command, metric in (("validate", "val/loss"), ("test", "test/loss")):
        out = unveil(command, *args, cwd=workdir).stdout
        match = re.search(rf"{re.escape(metric)}\s+([0-9.]+)", out)
        assert match and float(match[1]) > 0, out


def test_fit_on_two_cpu_ranks_from_the_command_line(two_ranks):
    run, result = two_ranks
    output = result.stdout + result.stderr
    assert "Starting with 2 processes" in output, output[-3000:]
    assert checkpoint_step(run / "checkpoints/last.ckpt") == 2
    assert (run / "reconstructions/step_000002.png").is_file()


def test_presets_stack_on_a_paper_recipe(tmp_path):
    # The README's `unveil fit --config mae_hiera_l_in1k --config presets/fsdp --config presets/bf16`, resolved
    # (FSDP needs GPUs; the 2-rank test above runs presets/ddp).
    out = unveil("fit", "--config", "mae_hiera_l_in1k", "--config", "presets/fsdp", "--config", "presets/bf16",
                 "--print_config", cwd=tmp_path).stdout
    assert "FSDPStrategy" in out and re.search(r"precision: bf16-mixed", out), out[-2000:]


# ------------------------------------------------------------------------------------------------ shards


def test_image_shards_make_info_and_fit_with_validation_shards(workdir, tmp_path):
    folder = fresh_folder(workdir, tmp_path)
    for split in ("train", "val"):
        unveil("shards", "make", "images", "--root", "data/shapes", "--split", split, "--out", "shards/shapes",
               "--max-size", "1GB", "--max-count", "8", "--quiet", cwd=folder)
    info = unveil("shards", "info", "shards/shapes/train.json", cwd=folder).stdout
    assert "2 shards, 16 samples, 2 classes" in info, info
    unveil("fit", "--config", "quickstart", "--data.init_args.root=null",
           "--data.init_args.shards=shards/shapes/train.json", "--data.init_args.val_shards=shards/shapes/val.json",
           *TINY_IMAGE, cwd=folder)
    (run,) = (folder / "runs/quickstart").glob("version_*")
    assert checkpoint_step(run / "checkpoints/last.ckpt") == 2
    # the pictures come from the validation shards, before the first step and after each
    assert len(list((run / "reconstructions").glob("step_*.png"))) == 3


# ------------------------------------------------------------------------------------------------ export


# timm here; unveil and sam2 slow (safetensors, read by the same build_backbone as unveil, in the W&B test below)
@pytest.mark.parametrize("fmt", ["timm", *(pytest.param(f, marks=pytest.mark.slow) for f in ("unveil", "sam2"))])
def test_export_loads_as_printed(workdir, quickstart, fmt):
    ckpt = quickstart / "checkpoints/last.ckpt"
    out = unveil("export", str(ckpt), "--format", fmt, "--out", f"exports/hiera_{fmt}.pt", cwd=workdir).stdout
    (namespace,) = load_as_printed(out, workdir)
    model = namespace["model"]
    source = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]["model.patch_embed.proj.weight"]
    loaded = [v for k, v in model.state_dict().items() if k.endswith("patch_embed.proj.weight")]
    assert len(loaded) == 1 and torch.equal(loaded[0], source)


@pytest.mark.slow
def test_export_hiera_loads_as_printed(workdir, two_ranks):
    # the official package has no absolute-win embeddings: export the 2-rank run (the default embeddings)
    run, _ = two_ranks
    ckpt = run / "checkpoints/last.ckpt"
    out = unveil("export", str(ckpt), "--format", "hiera", "--out", "exports/hiera_official.pth", cwd=workdir).stdout
    (namespace,) = load_as_printed(out, workdir)
    source = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(namespace["model"].patch_embed.proj.weight, source["model.patch_embed.proj.weight"])


# ------------------------------------------------------------------------------------------------ W&B, SLURM


def test_wandb_offline_with_the_backbone_exported_at_the_end(workdir, tmp_path):
    # README: `WANDB_MODE=offline unveil fit --config quickstart --trainer.logger='{class_path: WandbLogger, ...}'
    # --trainer.callbacks+=ExportBackbone`, in a fresh process (ExportBackbone is resolved by its short name).
    folder = fresh_folder(workdir, tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "WANDB_DIR"}  # W&B's files in the run folder
    unveil("fit", "--config", "quickstart", *TINY_IMAGE,
           "--trainer.logger={class_path: WandbLogger, init_args: {project: unveil}}",
           "--trainer.callbacks+=ExportBackbone", cwd=folder, env={**env, "WANDB_MODE": "offline"})
    root = folder / "runs/quickstart"
    (offline_run,) = root.rglob("offline-run-*")
    assert list(offline_run.glob("run-*.wandb"))
    (backbone,) = root.rglob("backbone.safetensors")
    from unveil.pretrain.checkpoints import build_backbone

    model = build_backbone(backbone)
    assert model(torch.zeros(1, 3, 64, 64)).shape[0] == 1


def test_slurm_dry_run_prints_the_script_and_writes_nothing(tmp_path):
    out = unveil("slurm", "--config", "mae_hiera_b_in1k", "--nodes", "2", "--dry-run", cwd=tmp_path).stdout
    assert "#SBATCH --nodes=2" in out and "srun" in out and "unveil fit --config" in out, out
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ slow: other kinds


@pytest.mark.slow
def test_video_shards_make_info_and_fit_with_validation_shards(tmp_path):
    unveil("synth", "videos", "--out", "data/shapes_video", "--num_classes", "2", "--train_per_class", "2",
           "--val_per_class", "1", "--num_frames", "16", "--size", "64", "--progress", "false", cwd=tmp_path)
    for split in ("train", "val"):
        unveil("shards", "make", "videos", "--csv", f"data/shapes_video/{split}.csv", "--out", "shards/k",
               "--short-side", "32", "--quiet", cwd=tmp_path)
    info = unveil("shards", "info", "shards/k/train.json", cwd=tmp_path).stdout
    assert "1 shards, 4 samples" in info, info
    unveil("fit", "--config", "quickstart_video", "--data.init_args.root=null", "--data.init_args.csv_train=null",
           "--data.init_args.csv_val=null", "--data.init_args.shards=shards/k/train.json",
           "--data.init_args.val_shards=shards/k/val.json", "--data.init_args.input_size", "32",
           "--data.init_args.batch_size", "2", "--data.init_args.loader.num_workers", "0",
           "--data.init_args.repeated_sampling", "1", "--model.init_args.model.init_args.input_size=[8,32,32]", "--trainer.max_steps", "2",
           "--trainer.val_check_interval", "2", "--model.init_args.pictures.every_n_steps", "1",
           "--model.init_args.pictures.num_samples", "2", cwd=tmp_path)
    (run,) = (tmp_path / "runs/quickstart_video").glob("version_*")
    assert checkpoint_step(run / "checkpoints/last.ckpt") == 2
    assert len(list((run / "reconstructions").glob("step_*.png"))) == 3


@pytest.mark.slow
def test_audio_shards_make_and_info(tmp_path):
    # No recipe pretrains on audio alone; the audio shards' samples are read in test_picture_samples.py.
    unveil("synth", "audio", "--out", "data/as", "--num_classes", "2", "--train_per_class", "2",
           "--val_per_class", "1", "--duration", "1.0", "--progress", "false", cwd=tmp_path)
    unveil("shards", "make", "audio", "--csv", "data/as/train_audio.csv", "--class-index",
           "data/as/class_labels_indices.csv", "--out", "shards/as2m", "--quiet", cwd=tmp_path)
    info = unveil("shards", "info", "shards/as2m/train_audio.json", cwd=tmp_path).stdout
    assert "1 shards, 4 samples, 2 classes" in info, info


@pytest.mark.slow
def test_mavil_stage1_then_stage2_on_audio_video_shards_and_export(tmp_path):
    unveil("synth", "audiovideo", "--out", "data/mavil_av", "--num_classes", "2", "--train_per_class", "4",
           "--val_per_class", "2", "--duration", "2.0", "--size", "32", "--progress", "false", cwd=tmp_path)
    tiny = ("--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--data.init_args.batch_size", "4",
            "--data.init_args.loader.num_workers", "0")
    # stage 1 as the README runs it (folders) ...
    unveil("fit", "--config", "quickstart_mavil", *tiny, "--model.init_args.pictures.every_n_steps", "1",
           cwd=tmp_path)
    stage1 = tmp_path / "runs/quickstart_mavil/stage1/checkpoints/last.ckpt"
    assert checkpoint_step(stage1) == 2
    assert list((tmp_path / "runs/quickstart_mavil/stage1").rglob("spectrogram_step_000000.png"))
    # ... and stage 2, its teacher from that checkpoint, on train and val shards
    for split in ("train", "val"):
        unveil("shards", "make", "audio-video", "--root", "data/mavil_av", "--split", split, "--out", "shards/av",
               "--quiet", cwd=tmp_path)
    info = unveil("shards", "info", "shards/av/val.json", cwd=tmp_path).stdout
    assert "1 shards, 4 samples" in info, info
    unveil("fit", "--config", "quickstart_mavil_stage2", *tiny, "--data.init_args.root=null",
           "--data.init_args.shards=shards/av/train.json", "--data.init_args.val_shards=shards/av/val.json",
           cwd=tmp_path)
    assert checkpoint_step(tmp_path / "runs/quickstart_mavil/stage2/checkpoints/last.ckpt") == 2
    # the README's MAViL export: both encoders, each loaded as printed
    out = unveil("export", str(stage1), "--format", "timm", "--out", "exports/mavil.pth", cwd=tmp_path).stdout
    audio, video = load_as_printed(out, tmp_path)
    source = torch.load(stage1, map_location="cpu", weights_only=True)["state_dict"]
    for namespace, modality in ((audio, "audio"), (video, "video")):
        assert isinstance(namespace["model"], timm.models.vision_transformer.VisionTransformer)
        blocks = namespace["model"].blocks[0].attn.qkv.weight
        assert torch.equal(blocks, source[f"model.{modality}_encoder.blocks.0.attn.qkv.weight"])
