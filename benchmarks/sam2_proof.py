"""Does a pretrained trunk help SAM 2? ``quickstart_sam2`` twice on generated videos, with the same seed, data and
number of steps: once from a trunk export, once from a random trunk; J&F on the validation videos at each
evaluation point, printed side by side and drawn as a curve (J&F against optimiser steps).

    unveil synth images --out data/shapes
    unveil fit --config quickstart --config presets/abswin
    unveil export runs/quickstart/version_0/checkpoints/last.ckpt --format unveil --out exports/quickstart_abswin.pt
    python benchmarks/sam2_proof.py --trunk exports/quickstart_abswin.pt --steps 300 --eval-every 50

The videos (``--data``) are generated with ``unveil synth vos`` when the folder does not exist. Without
``--trunk`` both runs start from random trunks (a check that the script runs, not a comparison). Each run goes
through the ``unveil fit`` CLI into ``--work/<pretrained|random>``; extra ``unveil fit`` options can follow
``--``, e.g. ``-- --data.init_args.num_workers 0``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the TensorBoard reader and the Pillow plot of the probe curves
import plot_probe_curve
from cli_runs import fit_command, proof_arguments, run, unveil_command

TAG = "val/J&F"
RUNS = {"pretrained": ((214, 39, 40), "pretrained trunk"), "random": ((31, 119, 180), "random trunk")}


def fit(name: str, args, extra: list[str]) -> list[tuple[int, float]]:
    root = args.work / name
    if root.exists():
        shutil.rmtree(root)
    command = fit_command("quickstart_sam2", root, args.data, args.seed, args.steps, args.eval_every)
    if name == "pretrained" and args.trunk is not None:
        command += ["--model.init_args.init_trunk", str(args.trunk)]
    run(command + extra)
    scalars = plot_probe_curve.read_scalars(root)
    if TAG not in scalars:
        raise SystemExit(f"{root}: no {TAG} logged (were there validation points within --steps?)")
    # Lightning logs a validation after k optimiser steps at step k - 1
    return [(step + 1, value) for step, value in scalars[TAG]]


def main(argv=None) -> int:
    args, extra = proof_arguments(
        argv, __doc__.split("\n\n")[0], ("--trunk", "an abs-win trunk export (none: random)"),
        data="data/vos_shapes", steps=300, work="runs/sam2_proof",
        more=lambda parser: parser.add_argument("--out", type=Path, default=Path("docs/sam2_proof.png")),
    )
    if not args.data.exists():
        run([*unveil_command(), "synth", "vos", "--out", str(args.data)])
    curves = {name: fit(name, args, extra) for name in RUNS}

    print(f"\nJ&F on the validation videos of {args.data} (seed {args.seed}, trunk {args.trunk or 'random'})")
    print(f"{'step':>6} {'pretrained':>11} {'random':>8}")
    random_at = dict(curves["random"])
    for step, value in curves["pretrained"]:
        other = random_at.get(step)
        print(f"{step:>6} {value:>11.3f} {other if other is None else f'{other:>8.3f}'}")
    plot_probe_curve.SERIES.update(RUNS)
    title = f"quickstart_sam2: J&F on generated videos ({args.steps} steps, seed {args.seed})"
    plot_probe_curve.draw(curves, None, title, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
