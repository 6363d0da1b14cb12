"""Proof that MAViL learns, on the CPU: stage 1, then stage 2 from that teacher (a few minutes on 2 idle cores).

Model, data settings and stage-1 loss weights are those of ``recipes/quickstart_mavil.yaml``. Data:
``make_audio_video_folder`` clips whose sound follows the picture (each shape's colour sets its tone's pitch, its
appearance and bounces the onsets, the class the timbre): 8 classes x 256 training clips and 8 x 16 held-out
ones by default. They are decoded once with the real ``AudioVideoDataModule`` pipeline (centred windows, no
augmentation) and kept in memory so that the CPU trains instead of decoding. With a few hundred clips the
model memorises the training pairs and held-out retrieval stays at chance; a few thousand make it generalise.

1. Stage 1 (``MAViLPretrainModule``) trains a tiny MAViL for ``--stage1-steps`` steps. Audio→video and
   video→audio retrieval R@1 / R@5 on the held-out clips (``val``) are printed before and after, beside
   chance (1/N and 5/N for N held-out clips).
2. Stage 2 (``MAViLSelfTrainModule``) trains a new student on the frozen stage-1 teacher (from the stage-1
   checkpoint) for ``--stage2-steps`` steps. The feature-reconstruction loss on the held-out clips (fixed
   masks) is printed before and after.

    python benchmarks/mavil_learns.py [--stage1-steps 2000] [--stage2-steps 300] [--out /tmp/mavil_learns]

Exits with status 1 if audio→video R@1 does not reach 3x chance or the stage-2 loss does not fall.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from torch.utils.data import DataLoader, Dataset
from unveil.datasets import AudioVideoDataModule, AudioVideoDataset
from unveil.datasets.synth import make_audio_video_folder
from unveil.models import MAViL
from unveil.pretrain import MAViLPretrainModule, MAViLSelfTrainModule
from unveil.pretrain.contrastive import retrieval_recall
from unveil.pretrain.mae import seeded_rng

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart_mavil.yaml"


def quickstart_settings() -> tuple[dict, dict, dict]:
    """The model, data and stage-1 loss settings of recipes/quickstart_mavil.yaml (one source of truth)."""
    recipe = yaml.safe_load(RECIPE.read_text())
    module = recipe["model"]["init_args"]
    model = dict(module["model"]["init_args"])
    model["audio_size"] = tuple(model["audio_size"])
    data = {k: recipe["data"]["init_args"][k]
            for k in ("duration", "video_fps", "num_frames", "input_size", "target_length")}
    losses = {"contrastive": dict(module["contrastive"])}
    return model, data, losses


class InMemory(Dataset):
    """Decoded samples (``fbank``, ``video``) kept in memory."""

    def __init__(self, dataset: AudioVideoDataset):
        self.samples = []
        for index in range(len(dataset)):
            sample = dataset[index]  # decode once
            self.samples.append({"fbank": sample["fbank"], "video": sample["video"]})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


class InMemoryData(pl.LightningDataModule):
    def __init__(self, train: Dataset, val: Dataset, batch_size: int):
        super().__init__()
        self.train, self.val, self.batch_size = train, val, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=64)


def load_data(root: Path, data: dict, classes: int, train_per_class: int, val_per_class: int,
              seed: int) -> tuple[InMemory, InMemory]:
    make_audio_video_folder(root, num_classes=classes, train_per_class=train_per_class, val_per_class=val_per_class,
                            duration=data["duration"], fps=8, size=data["input_size"], seed=seed, progress=False)
    datamodule = AudioVideoDataModule(root=str(root), batch_size=1, **data, loader={"num_workers": 0, "pin_memory": False})
    pipeline = datamodule.pipeline(train=False)
    return (InMemory(AudioVideoDataset(str(root), "train", pipeline=pipeline)),
            InMemory(AudioVideoDataset(str(root), "val", pipeline=pipeline)))


@torch.no_grad()
def retrieval(model: MAViL, data: InMemory) -> dict[str, float]:
    model.eval()
    batch = DataLoader(data, batch_size=len(data)).__iter__().__next__()
    audio, video = model.clip_embeddings(batch["fbank"], batch["video"])
    model.train()
    a2v = retrieval_recall(audio, video, (1, 5))
    v2a = retrieval_recall(video, audio, (1, 5))
    return {"a2v_R@1": a2v[1], "a2v_R@5": a2v[5], "v2a_R@1": v2a[1], "v2a_R@5": v2a[5]}


@torch.no_grad()
def feature_loss(module: MAViLSelfTrainModule, data: InMemory, seed: int = 0) -> float:
    """Stage-2 loss on the held-out clips under fixed masks."""
    module.eval()
    batch = DataLoader(data, batch_size=len(data)).__iter__().__next__()
    with seeded_rng(seed, torch.device("cpu")):
        loss = float(module.compute_losses(batch)["loss"])
    module.train()
    return loss


def trainer(steps: int, root: Path) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      default_root_dir=str(root), enable_checkpointing=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage1-steps", type=int, default=2000)
    parser.add_argument("--stage2-steps", type=int, default=300)
    parser.add_argument("--classes", type=int, default=8, help="shape kinds (at most 8)")
    parser.add_argument("--train-per-class", type=int, default=256)
    parser.add_argument("--val-per-class", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=str, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="mavil_learns_"))

    model_args, data_args, loss_args = quickstart_settings()
    start = time.perf_counter()
    train, val = load_data(out / "data", data_args, args.classes, args.train_per_class, args.val_per_class, args.seed)
    print(f"data: {len(train)} training clips, {len(val)} held-out clips ({time.perf_counter() - start:.0f} s)")
    n = len(val)
    chance = {"R@1": 1 / n, "R@5": min(5 / n, 1.0)}
    data = InMemoryData(train, val, args.batch_size)

    # ---- stage 1
    pl.seed_everything(args.seed, verbose=False)
    optimizer = {"lr": args.lr, "weight_decay": 0.05, "min_lr": args.lr / 10}
    stage1 = MAViLPretrainModule(MAViL(**model_args), **loss_args,
                                 optimizer={**optimizer, "warmup_steps": args.stage1_steps // 10},
                                 pictures={"every_n_steps": 0})
    before = retrieval(stage1.model, val)
    start = time.perf_counter()
    fit1 = trainer(args.stage1_steps, out / "stage1")
    fit1.fit(stage1, datamodule=data)
    after = retrieval(stage1.model, val)
    stage1_time = time.perf_counter() - start
    checkpoint = out / "stage1.ckpt"
    fit1.save_checkpoint(checkpoint)
    print(f"\nstage 1: {args.stage1_steps} steps of batch {args.batch_size} in {stage1_time:.0f} s")
    print(f"retrieval on {n} held-out clips    chance R@1 {chance['R@1']:.3f}   R@5 {chance['R@5']:.3f}")
    for name, values in (("before", before), ("after", after)):
        print(f"  {name:<7}" + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))

    # ---- stage 2
    pl.seed_everything(args.seed + 1, verbose=False)
    stage2 = MAViLSelfTrainModule(MAViL(**{**model_args, "target_dim": model_args["embed_dim"]}), str(checkpoint),
                                  target_layers=(-1,),
                                  optimizer={**optimizer, "warmup_steps": args.stage2_steps // 10})
    loss_before = feature_loss(stage2, val)
    start = time.perf_counter()
    trainer(args.stage2_steps, out / "stage2").fit(stage2, datamodule=data)
    loss_after = feature_loss(stage2, val)
    print(f"\nstage 2: {args.stage2_steps} steps in {time.perf_counter() - start:.0f} s; feature-reconstruction loss "
          f"on held-out clips {loss_before:.4f} -> {loss_after:.4f}")

    result = {"held_out_clips": n, "chance": chance, "stage1_before": before, "stage1_after": after,
              "stage2_loss_before": loss_before, "stage2_loss_after": loss_after}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"\nresults in {out / 'result.json'}")
    ok = after["a2v_R@1"] >= 3 * chance["R@1"] and loss_after < loss_before
    print("PASS" if ok else "FAIL: audio→video R@1 below 3x chance, or the stage-2 loss did not fall")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
