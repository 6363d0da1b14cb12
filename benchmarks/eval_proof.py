"""The proof that pretraining learned something: a quickstart checkpoint against the same trunk randomly initialised.

    unveil synth images --out data/shapes
    unveil fit --config quickstart
    python benchmarks/eval_proof.py --checkpoint runs/quickstart/version_0/checkpoints/last.ckpt \\
        --data data/shapes --seeds 0 1 2 --out docs/eval_proof.json

Rows (each with the same budget for both starting points, on the held-out ``val`` split):

- kNN top-1: ``unveil knn`` (dinov2's protocol: cosine, T = 0.07) for k = 10, 20, 100, 200; the random trunk
  is drawn once per seed;
- linear-probe top-1: ``unveil fit --config quickstart_linprobe`` (frozen trunk, BatchNorm + linear, LARS);
- fine-tuning top-1: ``unveil fit --config quickstart_finetune`` (the whole trunk, AdamW, layer decay).

The probe and fine-tuning rows run the shipped recipes through the ``unveil`` command with
``--model.init_args.checkpoint CKPT`` or ``--model.init_args.random_init true``, one run per seed
(``seed_everything``: the head, the random trunk, the data order and augmentation), and read the final
``val/top1`` from a CSV log. ``--steps`` overrides both recipes' ``max_steps`` (default: the recipes').

MAViL (``--mavil-checkpoint`` and ``--mavil-data``, a the quickstart MAViL's folder): audio-only, video-only
and fused fine-tuning (``quickstart_finetune_mavil`` with ``modality`` audio, video, audio_video) against random
initialisation, same protocol.

Prints a Markdown table (mean ± spread over seeds) and writes every number to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_runs import unveil_command

STARTS = ("pretrained", "random init")


def last_metric(folder: Path, key: str) -> float:
    """The last logged value of ``key`` in a CSVLogger's ``metrics.csv`` under ``folder``."""
    files = sorted(folder.rglob("metrics.csv"))
    if not files:
        raise RuntimeError(f"no metrics.csv under {folder}")
    value = None
    with files[-1].open() as handle:
        for row in csv.DictReader(handle):
            if row.get(key):
                value = float(row[key])
    if value is None:
        raise RuntimeError(f"{files[-1]} has no {key}")
    return value


def fit_recipe(
    recipe: str, checkpoint: str, random_init: bool, seed: int, work: Path, extra: list[str]
) -> float:
    """Final ``val/top1`` of ``unveil fit --config RECIPE`` from ``checkpoint`` (or its random initialisation)."""
    run = work / f"{recipe}-{'random' if random_init else 'pretrained'}-{seed}"
    shutil.rmtree(run, ignore_errors=True)
    logger = f"{{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {run}, name: ''}}}}"
    command = [
        *unveil_command(),
        "fit",
        "--config",
        recipe,
        "--model.init_args.checkpoint",
        checkpoint,
        "--model.init_args.random_init",
        str(random_init).lower(),
        "--seed_everything",
        str(seed),
        "--trainer.default_root_dir",
        str(run),
        f"--trainer.logger={logger}",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, "WANDB_MODE": "offline"}
    )
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return last_metric(run, "val/top1")


def knn_row(checkpoint: str, data: str, input_size: int, random_init: bool, seed: int) -> dict[int, float]:
    from unveil.launch.knn import build_parser, run_knn

    argv = [
        checkpoint,
        "--data",
        data,
        "--input-size",
        str(input_size),
        "--seed",
        str(seed),
        "--num-workers",
        "0",
    ]
    args = build_parser().parse_args(argv + (["--random-init"] if random_init else []))
    return {int(k): v for k, v in run_knn(args)["top1"].items()}


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="MAE quickstart checkpoint (.ckpt or unveil export)")
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=None, help="max_steps of the probe and fine-tuning runs")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="batch size of those runs (default: the recipes')"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["knn", "linprobe", "finetune"])
    parser.add_argument("--mavil-checkpoint", default=None, help="MAViL quickstart stage-1 checkpoint")
    parser.add_argument("--mavil-data", default="data/mavil_av")
    parser.add_argument("--mavil-steps", type=int, default=None)
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="write the numbers to this JSON file")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="eval_proof-"))
    # the rows score the last validation, which must come at the final step
    steps = (
        ["--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.steps)]
        if args.steps
        else []
    )
    if args.batch_size:
        steps += ["--data.init_args.batch_size", str(args.batch_size)]
    data = ["--data.init_args.root", args.data]
    results: dict = {"seeds": args.seeds, "rows": {}}
    rows = results["rows"]

    def record(name: str, start: str, value: float) -> None:
        rows.setdefault(name, {}).setdefault(start, []).append(value)
        print(f"  {name:<28s} {start:<12s} {value:.4f}", flush=True)

    if args.checkpoint:
        for seed in args.seeds:
            for start in STARTS:
                random_init = start == "random init"
                if "knn" not in args.skip:
                    for k, value in knn_row(
                        args.checkpoint, args.data, args.input_size, random_init, seed
                    ).items():
                        record(f"MAE kNN top-1 (k={k})", start, value)
                if "linprobe" not in args.skip:
                    value = fit_recipe(
                        "quickstart_linprobe", args.checkpoint, random_init, seed, work, steps + data
                    )
                    record("MAE linear probe top-1", start, value)
                if "finetune" not in args.skip:
                    value = fit_recipe(
                        "quickstart_finetune", args.checkpoint, random_init, seed, work, steps + data
                    )
                    record("MAE fine-tuning top-1", start, value)
    if args.mavil_checkpoint:
        mavil_steps = (
            [
                "--trainer.max_steps",
                str(args.mavil_steps),
                "--trainer.val_check_interval",
                str(args.mavil_steps),
            ]
            if args.mavil_steps
            else []
        )
        for seed in args.seeds:
            for modality in ("audio", "video", "audio_video"):
                for start in STARTS:
                    extra = [
                        *mavil_steps,
                        "--model.init_args.modality",
                        modality,
                        "--data.init_args.root",
                        args.mavil_data,
                    ]
                    value = fit_recipe(
                        "quickstart_finetune_mavil",
                        args.mavil_checkpoint,
                        start == "random init",
                        seed,
                        work / modality,
                        extra,
                    )
                    record(f"MAViL {modality} fine-tuning top-1", start, value)

    print(
        f"\n| evaluation ({len(args.seeds)} seed{'s' * (len(args.seeds) > 1)}) | pretrained | random init |"
    )
    print("|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {summary(values.get(STARTS[0], []))} | {summary(values.get(STARTS[1], []))} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
