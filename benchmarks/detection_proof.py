"""Does a pretrained trunk help detection? ``quickstart_hieradet`` twice on generated COCO data, with the same
seed, data and number of steps: once from a trunk export, once from a random trunk; box and mask AP (COCO AP,
AP50, AP75) on the validation images at each evaluation point, printed side by side and written as JSON.

    unveil synth images --out data/shapes
    unveil fit --config quickstart --config presets/abswin
    unveil export runs/quickstart/version_0/checkpoints/last.ckpt --format unveil --out exports/quickstart_abswin.pt
    python benchmarks/detection_proof.py --init exports/quickstart_abswin.pt --steps 600 --eval-every 100

The COCO folder (``--data``) is generated with ``unveil synth coco --size 128`` when it does not exist. Without
``--init`` both runs start from random trunks (a check that the script runs, not a comparison). Each run goes
through the ``unveil fit`` CLI into ``--work/<pretrained|random>``; extra ``unveil fit`` options can follow
``--``, e.g. ``-- --data.init_args.batch_size 2``. The JSON (``--json``) holds, per run, every logged
``val/{bbox,segm}_AP*`` as ``[[step, value], ...]``, and the command lines.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the TensorBoard reader
import plot_probe_curve
from cli_runs import fit_command, proof_arguments, run, unveil_command

RUNS = ("pretrained", "random")
TAGS = tuple(f"val/{iou}_{key}" for iou in ("bbox", "segm") for key in ("AP", "AP_50", "AP_75"))


def fit(name: str, args, extra: list[str]) -> tuple[list[str], dict[str, list[tuple[int, float]]]]:
    root = args.work / name
    if root.exists():
        shutil.rmtree(root)
    command = fit_command("quickstart_hieradet", root, args.data, args.seed, args.steps, args.eval_every)
    if name == "pretrained" and args.init is not None:
        command += ["--model.init_args.init_checkpoint", str(args.init)]
    run(command + extra)
    scalars = plot_probe_curve.read_scalars(root)
    missing = [tag for tag in TAGS if tag not in scalars]
    if missing:
        raise SystemExit(f"{root}: no {', '.join(missing)} logged (were there validation points within --steps?)")
    # Lightning logs a validation after k optimiser steps at step k - 1
    return command + extra, {tag: [(step + 1, value) for step, value in scalars[tag]] for tag in TAGS}


def main(argv=None) -> int:
    args, extra = proof_arguments(
        argv, __doc__.split("\n\n")[0],
        ("--init", "an abs-win trunk export, e.g. from 'unveil export --format unveil' (none: random)"),
        data="data/coco_shapes", steps=150, work="runs/detection_proof",
        more=lambda parser: parser.add_argument(
            "--json", type=Path, default=Path("runs/detection_proof/result.json")
        ),
    )
    if not args.data.exists():
        run([*unveil_command(), "synth", "coco", "--out", str(args.data), "--size", "128"])
    elif not (args.data / "annotations").is_dir():
        raise SystemExit(f"--data {args.data}: no annotations/ folder (a COCO layout from 'unveil synth coco')")
    commands, curves = {}, {}
    for name in RUNS:
        commands[name], curves[name] = fit(name, args, extra)

    print(f"\nCOCO AP on the validation images of {args.data} after {args.steps} steps "
          f"(seed {args.seed}, init {args.init or 'random'})")
    print(f"{'step':>6} {'metric':<14} {'pretrained':>11} {'random':>8}")
    for tag in TAGS:
        random_at = dict(curves["random"][tag])
        for step, value in curves["pretrained"][tag]:
            other = random_at.get(step)
            print(f"{step:>6} {tag[4:]:<14} {value:>11.4f} {'-' if other is None else f'{other:>8.4f}'}")
    final = {name: {tag[4:]: curves[name][tag][-1][1] for tag in TAGS} for name in RUNS}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(
        {"init": str(args.init) if args.init else None, "data": str(args.data), "steps": args.steps,
         "seed": args.seed, "final": final, "curves": curves, "commands": commands}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
