"""Data-loader throughput: samples/s from folders and from WebDataset shards, with 0, 1 and 2 workers,
beside the rate at which an MAE Hiera-B train step consumes samples on the same machine.

Every loader is the training loader of a DataModule (the recipe's path), on generated data:

    image         224 RandomResizedCrop of 352 x 352 JPEGs                       (ImageDataModule)
    video         16 x 224 clips, stride 4, of 256 x 256 H.264 videos, 16 fps   (VideoDataModule)
    audio         1024 x 128 fbanks of 10 s 16 kHz WAVs                         (AudioDataModule)
    audio-video   MAViL clips: 8 frames at 2 fps x 224 + 400 x 128 fbank of 4 s (AudioVideoDataModule)

The consumption rate is the MAE train step of ``benchmarks/mae_throughput.py`` (Hiera-B, 224, batch 8,
fp32) measured in this process; pass ``--mae-rate`` to reuse a number from that script instead.

    python benchmarks/loader_throughput.py [--batches 6] [--workers 0 1 2] [--only image video] [--mae-rate R]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
import warnings
from pathlib import Path

import torch
from unveil.datasets.shards import make_shards
from unveil.datasets.synth import (
    make_audio_folder,
    make_audio_video_folder,
    make_image_folder,
    make_video_folder,
)

MODALITIES = ("image", "video", "audio", "audio-video")


# modality: (folder name, generator and its arguments, shard kind, samples per shard)
DATASETS = {
    "image": ("images", make_image_folder, {"size": 352, "train_per_class": 64}, "images", 64),
    "video": (
        "videos",
        make_video_folder,
        {"num_frames": 64, "fps": 16, "size": 256, "train_per_class": 6},
        "videos",
        6,
    ),
    "audio": ("audio", make_audio_folder, {"duration": 10.0, "train_per_class": 16}, "audio", 16),
    "audio-video": (
        "av",
        make_audio_video_folder,
        {"duration": 4.0, "fps": 16, "size": 256, "train_per_class": 4},
        "audio-video",
        4,
    ),
}


def generate(root: Path, modalities: list[str]) -> dict[str, dict]:
    """Write the datasets of ``modalities`` (a dataset already under ``root`` is reused) and their shards;
    return each modality's DataModule class and arguments for the folder and the shard source."""
    from unveil.datasets import AudioDataModule, AudioVideoDataModule, ImageDataModule, VideoDataModule

    shards, folders = {}, {}
    for modality in modalities:
        name, maker, arguments, kind, per_shard = DATASETS[modality]
        folder = root / name
        if not (folder / "train").is_dir():
            maker(folder, num_classes=4, val_per_class=0, progress=False, **arguments)
        folders[modality] = folder
        shards[modality] = make_shards(
            kind, root / "shards" / name, folder, max_count=per_shard, progress=False
        )
    images, videos = folders.get("image"), folders.get("video")
    audio, audio_video = folders.get("audio"), folders.get("audio-video")
    common = {"val_split": None}
    return {
        "image": {
            "class": ImageDataModule,
            "folder": {"root": str(images)},
            "args": {"input_size": 224, "batch_size": 32, **common},
        },
        "video": {
            "class": VideoDataModule,
            "folder": {"root": str(videos)},
            "args": {"input_size": 224, "num_frames": 16, "sampling_rate": 4, "batch_size": 4, **common},
        },
        "audio": {
            "class": AudioDataModule,
            "folder": {"root": str(audio)},
            "args": {"target_length": 1024, "batch_size": 16, **common},
        },
        "audio-video": {
            "class": AudioVideoDataModule,
            "folder": {"root": str(audio_video)},
            "args": {"duration": 4.0, "video_fps": 2.0, "input_size": 224, "batch_size": 4, **common},
        },
        "shards": shards,
    }


def loader_rate(data, batches: int) -> float:
    """Steady-state samples/s of ``data``'s training loader over ``batches`` batches.

    The warm-up starts the workers and drains the batches they prefetched meanwhile (``prefetch_factor``
    per worker), so that the timed batches are made while timing. The loader restarts when it runs out.
    """
    loader = data.train_dataloader()
    warmup = 2 + (loader.prefetch_factor or 0) * loader.num_workers
    iterator = iter(loader)

    def next_batch():
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:
            iterator = iter(loader)
            return next(iterator)

    for _ in range(warmup):
        next_batch()
    samples, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next_batch()
        samples += len(batch["key"])
    rate = samples / (time.perf_counter() - start)
    del iterator  # stops the workers
    return rate


def mae_rate(steps: int, batch: int = 8, device: str = "cpu") -> float:
    """Samples/s of the MAE Hiera-B 224 train step (``benchmarks/mae_throughput.py``'s step), fp32."""
    path = Path(__file__).with_name("mae_throughput.py")
    spec = importlib.util.spec_from_file_location("mae_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from unveil import models

    model = models.mae_hiera_base_224().train().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    x = torch.randn(batch, 3, 224, 224, device=device)
    mask = model.get_random_mask(x, 0.6)
    for _ in range(2 if device == "cpu" else 5):  # warm-up
        module.train_step(model, optimizer, x, mask)
    if device != "cpu":
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            module.train_step(model, optimizer, x, mask)
        torch.cuda.synchronize()
        return batch * steps / (time.perf_counter() - start)
    return batch * steps / module.time_steps(model, optimizer, [(x, mask)] * steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=8, help="timed batches per loader")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=MODALITIES, default=list(MODALITIES))
    parser.add_argument(
        "--mae-rate", type=float, help="MAE samples/s from mae_throughput.py (skips measuring)"
    )
    parser.add_argument("--mae-steps", type=int, default=3, help="timed MAE steps when measuring")
    parser.add_argument("--mae-device", default="cpu", help="where to time the MAE step: cpu or cuda")
    parser.add_argument("--mae-batch", type=int, default=8, help="MAE batch (the foundation benchmark's 8)")
    parser.add_argument("--data", help="folder for the generated data (default: a temporary folder)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(args.data or temporary)
        start = time.perf_counter()
        setups = generate(root, args.only)
        print(f"generated data and shards in {time.perf_counter() - start:.0f} s under {root}")
        if args.mae_rate is not None:
            consumption, source = args.mae_rate, "given"
        else:
            consumption = mae_rate(args.mae_steps, args.mae_batch, args.mae_device)
            source = f"measured here on {args.mae_device}"
        print(
            f"MAE Hiera-B 224 train step (batch {args.mae_batch}, fp32, {torch.get_num_threads()} threads): "
            f"{consumption:.2f} samples/s ({source})"
        )
        # Loading runs on one thread per process, as in DataLoader workers: with 0 workers, the training
        # process's intra-op threads would otherwise compete with the transforms for the same cores.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        print(f"loaders: 1 torch thread per process; {torch.multiprocessing.cpu_count()} CPUs")
        header = f"{'modality':<13}{'source':<8}" + "".join(f"{f'{w} workers':>12}" for w in args.workers)
        print(header + f"{'best / MAE':>12}")
        for modality in args.only:
            setup = setups[modality]
            for source in ("folder", "shards"):
                extra = (
                    setup["folder"]
                    if source == "folder"
                    else {
                        "shards": str(setups["shards"][modality]),
                        "resampled": True,
                        "epoch_samples": 10**6,
                    }
                )
                rates = []
                for workers in args.workers:
                    data = setup["class"](**extra, **setup["args"], loader={"num_workers": workers, "pin_memory": False})
                    rates.append(loader_rate(data, args.batches))
                cells = "".join(f"{rate:>12.1f}" for rate in rates)
                print(f"{modality:<13}{source:<8}{cells}{max(rates) / consumption:>11.1f}x", flush=True)
        torch.set_num_threads(threads)
        print(
            "samples/s (video: clips of 16 x 224; audio-video: clips). 'best / MAE': the best loader rate "
            "over the image MAE step's consumption; above 1x the loader keeps up on this machine."
        )


if __name__ == "__main__":
    main()
