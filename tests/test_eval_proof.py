"""benchmarks/eval_proof.py end to end on a tiny checkpoint: every row runs, both starting points, one table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]


def run_proof(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``python benchmarks/eval_proof.py ARGS`` in ``tmp_path`` → (the process, the rows it wrote)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "eval_proof.py"), *args,
         "--work", str(tmp_path / "work"), "--out", str(tmp_path / "proof.json")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=1800,
        env={**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((tmp_path / "proof.json").read_text())["rows"]


@pytest.mark.slow
def test_eval_proof_runs_every_row(tmp_path):
    from unveil.common.checkpoints import architecture_of, save_backbone
    from unveil.datasets.synth import make_image_folder
    from unveil.models import MaskedAutoencoderHiera

    make_image_folder(
        tmp_path / "shapes", num_classes=2, train_per_class=4, val_per_class=2, size=64, progress=False
    )
    torch.manual_seed(0)
    mae = MaskedAutoencoderHiera(
        input_size=(128, 128),
        embed_dim=16,
        num_heads=1,
        stages=(1, 1, 1, 1),
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=1,
    )
    save_backbone(tmp_path / "mae.pt", mae.state_dict(), architecture_of(mae))
    result, rows = run_proof(
        tmp_path, "--checkpoint", str(tmp_path / "mae.pt"), "--data", str(tmp_path / "shapes"), "--steps", "2",
        "--batch-size", "4",
    )
    for name in ("MAE kNN top-1 (k=20)", "MAE linear probe top-1", "MAE fine-tuning top-1"):
        assert set(rows[name]) == {"pretrained", "random init"}, name
        assert all(0.0 <= v <= 1.0 for values in rows[name].values() for v in values)
    assert "| MAE fine-tuning top-1 |" in result.stdout


@pytest.mark.slow
def test_eval_proof_mavil_rows(tmp_path):
    """The README's MAViL proof command: audio, video and fused fine-tuning from a stage-1 .ckpt and at random."""
    import yaml
    from tiny_configs import lightning_checkpoint
    from unveil.datasets.synth_av import make_audio_video_folder
    from unveil.models import MAViL

    make_audio_video_folder(
        tmp_path / "mavil_av", num_classes=2, train_per_class=16, val_per_class=2, duration=2.0, size=32,
        progress=False,
    )
    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart_mavil.yaml").read_text())
    torch.manual_seed(0)
    model = MAViL(**recipe["model"]["init_args"]["model"]["init_args"])  # the quickstart's sizes
    checkpoint = lightning_checkpoint(model, tmp_path / "stage1.ckpt")
    result, rows = run_proof(
        tmp_path, "--mavil-checkpoint", str(checkpoint), "--mavil-data", str(tmp_path / "mavil_av"),
        "--mavil-steps", "1",
    )
    for modality in ("audio", "video", "audio_video"):
        name = f"MAViL {modality} fine-tuning top-1"
        assert set(rows[name]) == {"pretrained", "random init"}, name
        assert all(0.0 <= v <= 1.0 for values in rows[name].values() for v in values)
    assert "| MAViL audio fine-tuning top-1 |" in result.stdout
