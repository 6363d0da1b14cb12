"""``unveil knn``: kNN top-1 of a backbone's frozen features (dinov2's protocol), for image backbones on an
image folder and for MAViL encoders (audio, video, or both fused) on an audio-video folder.

    unveil knn runs/quickstart/version_0/checkpoints/last.ckpt --data data/shapes --input-size 128
    unveil knn hiera_t_mae.pt --data data/shapes --input-size 128          # an `unveil export` file
    unveil knn last.ckpt --data data/shapes --input-size 128 --random-init # the same trunk, untrained
    unveil knn runs/quickstart_mavil/stage1/checkpoints/last.ckpt --data data/mavil_av --modality audio
    unveil knn mavil.ckpt --data data/mavil_av --modality audio_video --config quickstart_mavil

CKPT is any backbone ``unveil.finetune.load_pretrained_backbone`` starts from: an ``unveil export`` file, an
MAE pretraining ``.ckpt`` (its Hiera), an official Hiera state dict with ``--model hiera_tiny_224``, or a MAViL
stage-1/stage-2 ``.ckpt`` or export with ``--modality audio|video|audio_video`` (an exported single encoder
names its own modality). The training split (``--train-split``) is the neighbour bank, the validation split the
queries; both go through the evaluation transform, as dinov2 does.

- Images (``ImageFolderDataset``, resize and centre crop to ``--input-size``): the final tokens mean-pooled
  (``unveil.finetune.knn.pooled_features``).
- Audio / video / audio-video (``AudioVideoDataset`` of an ``unveil synth audiovideo`` folder, read through
  ``AudioVideoDataModule(...).pipeline(train=False)``: centred windows, no augmentation): the pooled
  features the fine-tuning head sees, ``ClassifierNet.features`` (patch tokens mean-pooled, CLS left out;
  audio and video concatenated when fused). Clip sizes: ``--config RECIPE`` takes ``data.init_args`` of a
  recipe (``quickstart_mavil``); the flags ``--duration``, ``--video-fps``, ``--num-frames``,
  ``--input-size``, ``--target-length`` override it; what neither gives comes from the checkpoint (frames,
  frame size and fbank length of its encoders; duration = frames / fps). Sizes that do not fit the
  checkpoint stop the command with one line. Labels: one class per clip (class folders); a multi-label
  source is refused.

Every feature then gets a LayerNorm without parameters and L2 normalisation; votes are weighted by
``exp(cosine / T)`` with T = 0.07, for each ``--k``. Mistakes (no such file or folder, a file that is not a
backbone, a MAViL checkpoint without ``--modality``, sizes that do not fit) stop the command with one line
and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from unveil.launch.cli import OneLineParser, UsageError

MODALITY_CHOICES = ("audio", "video", "audio_video")
"""What ``--modality`` starts from a MAViL checkpoint (``unveil.finetune.backbone.MODALITIES``)."""
CLIP_KEYS = (
    "duration",
    "video_fps",
    "num_frames",
    "stride",
    "input_size",
    "target_length",
    "fbank",
    "missing_audio",
    "silence_threshold",
    "audio_from",
    "allow_short",
    "frames_fps",
)
"""The ``data.init_args`` of a recipe that shape an evaluation clip (the rest: sources, loaders, augmentation)."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="unveil knn", description="kNN top-1 of a backbone's frozen features (dinov2 protocol)."
    )
    parser.add_argument(
        "checkpoint",
        help="an unveil export, a pretraining .ckpt (MAE, MAViL), or an official Hiera state dict",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="ImageNet-layout image folder, or an audio-video folder (unveil synth audiovideo), with train and val",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="side of the centre crop (images: default 224; video: default the checkpoint's frame size)",
    )
    parser.add_argument(
        "--modality",
        choices=MODALITY_CHOICES,
        default=None,
        help="MAViL checkpoints: the audio encoder, the video encoder, or both with the fusion blocks",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="MAViL: a recipe (name or YAML) whose data.init_args give the clip sizes (e.g. quickstart_mavil)",
    )
    parser.add_argument("--duration", type=float, default=None, help="MAViL: clip window in seconds")
    parser.add_argument(
        "--video-fps", type=float, default=None, help="MAViL: frames per second in the window"
    )
    parser.add_argument("--num-frames", type=int, default=None, help="MAViL: frames per clip")
    parser.add_argument("--target-length", type=int, default=None, help="MAViL: fbank frames per clip")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20, 100, 200], help="neighbour counts")
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument(
        "--model", default=None, help="factory name for a plain state dict (hiera_tiny_224, ...)"
    )
    parser.add_argument("--random-init", action="store_true", help="the same architecture, weights untrained")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    return parser


def run_knn(args: argparse.Namespace) -> dict:
    """Load, extract, vote; returns ``{"top1": {k: accuracy}, ...}`` (see the module docstring)."""
    import torch
    from unveil.finetune.backbone import load_pretrained_backbone

    data = Path(args.data)
    torch.manual_seed(args.seed)
    try:
        loaded = load_pretrained_backbone(
            args.checkpoint, model=args.model, modality=args.modality, random_init=args.random_init
        )
    except (ValueError, FileNotFoundError) as error:
        message = str(error).splitlines()[0]
        raise UsageError(message.replace("give modality=", "give --modality")) from None
    if loaded.kind == "hiera":
        train, val, classes = _image_features(args, data, loaded)
    else:
        train, val, classes = _clip_features(args, data, loaded)
    return _vote(args, data, loaded, train, val, classes)


def _check_splits(args: argparse.Namespace, data: Path, synth: str) -> None:
    for split in (args.train_split, args.val_split):
        if not (data / split).is_dir():
            raise UsageError(
                f"no folder '{data / split}' (run 'unveil synth {synth} --out {data}' to generate one)"
            )


def _image_features(args: argparse.Namespace, data: Path, loaded) -> tuple[tuple, tuple, list]:
    """(features, labels) of the train and val image splits, and the class names."""
    from torch.utils.data import DataLoader
    from unveil.datasets.image import ImageFolderDataset, image_eval_transform
    from unveil.finetune.knn import extract_features

    _check_splits(args, data, "images")
    for flag in ("config", "duration", "video_fps", "num_frames", "target_length"):
        if getattr(args, flag) is not None:
            raise UsageError(
                f"--{flag.replace('_', '-')} applies to MAViL checkpoints; '{args.checkpoint}' is an image backbone"
            )
    transform = image_eval_transform(args.input_size or 224)
    features = {}
    for split in (args.train_split, args.val_split):
        dataset = ImageFolderDataset(data, split, transform=transform)
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
        features[split] = (extract_features(loaded.model, loader), list(dataset.classes))
    (train, classes), (val, val_classes) = features[args.train_split], features[args.val_split]
    if val_classes != classes:
        raise UsageError(f"the class folders of '{args.val_split}' and '{args.train_split}' differ")
    return train, val, classes


def _encoders(model) -> tuple:
    """(audio encoder or None, video encoder or None) of a MAViL backbone."""
    audio = model if hasattr(model, "audio_size") else getattr(model, "audio_encoder", None)
    video = model if hasattr(model, "image_size") else getattr(model, "video_encoder", None)
    return audio, video


def clip_settings(args: argparse.Namespace, model) -> dict:
    """The ``AudioVideoDataModule`` clip arguments: the recipe's ``data.init_args`` (``--config``), then the
    flags, then what the checkpoint's encoders take; one line when they do not fit the checkpoint."""
    settings: dict = {}
    if args.config:
        settings.update(_recipe_clip_settings(args.config))
    for key in ("duration", "video_fps", "num_frames", "input_size", "target_length"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    audio, video = _encoders(model)
    expected: dict = {}
    if audio is not None:
        expected["target_length"] = int(audio.audio_size[0])
    if video is not None:
        expected["num_frames"], expected["input_size"] = int(video.num_frames), int(video.image_size)
    for key, value in expected.items():
        settings.setdefault(key, value)
    if settings.get("duration") is None:
        fps = settings.get("video_fps", 2.0)  # AudioVideoDataModule's default rate (MAViL: 2 fps)
        frames = settings.get("num_frames")
        if video is not None and frames and fps:
            settings["duration"] = frames / fps
        else:  # audio only: the fbank's span at its 10 ms hop
            settings["duration"] = settings.get("target_length", 400) / 100
    for key, value in expected.items():
        if settings[key] != value:
            given = getattr(args, key) is not None
            where = (
                f"--{key.replace('_', '-')}" if given else f"{key} (data.init_args of --config {args.config})"
            )
            raise UsageError(
                f"{where} {settings[key]} does not fit '{args.checkpoint}': its encoder takes {value} "
                f"({'fbank frames' if key == 'target_length' else 'frames' if key == 'num_frames' else 'pixels'})"
            )
    return settings


def _recipe_clip_settings(config: str) -> dict:
    import yaml
    from unveil.launch.recipes import RecipeNotFoundError, resolve_recipe

    try:
        path = resolve_recipe(config)
    except RecipeNotFoundError:
        raise UsageError(f"--config: no recipe file or shipped recipe named '{config}'") from None
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UsageError(f"--config: '{path}' is not valid YAML ({str(error).splitlines()[0]})") from None
    data = recipe.get("data") if isinstance(recipe, dict) else None
    init_args = data.get("init_args") if isinstance(data, dict) else None
    if not isinstance(init_args, dict):
        raise UsageError(f"--config: '{path}' has no data.init_args")
    settings = {k: v for k, v in init_args.items() if k in CLIP_KEYS}
    if isinstance(settings.get("fbank"), dict):
        from unveil.datasets.datamodules.options import FbankOptions

        fbank = settings["fbank"].get("init_args", settings["fbank"])
        try:
            settings["fbank"] = FbankOptions(**{k: v for k, v in fbank.items() if k != "class_path"})
        except (TypeError, ValueError) as error:
            raise UsageError(
                f"--config: data.init_args.fbank of '{path}': {str(error).splitlines()[0]}"
            ) from None
    return settings


def _clip_features(args: argparse.Namespace, data: Path, loaded) -> tuple[tuple, tuple, list]:
    """(features, labels) of the train and val clips of an audio-video folder, and the class names:
    ``ClassifierNet.features`` of the fine-tuning net, through the DataModule's evaluation pipeline."""
    from torch.utils.data import DataLoader
    from unveil.datasets import AudioVideoDataModule, AudioVideoDataset
    from unveil.finetune.classification import ClassifierNet
    from unveil.finetune.knn import extract_features

    _check_splits(args, data, "audiovideo")
    settings = clip_settings(args, loaded.model)
    try:
        datamodule = AudioVideoDataModule(
            root=str(data),
            train_split=args.train_split,
            val_split=args.val_split,
            batch_size=args.batch_size,
            **settings,
            loader={"num_workers": args.num_workers, "pin_memory": False},
        )
    except (TypeError, ValueError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    pipeline = datamodule.pipeline(train=False)
    net = ClassifierNet(loaded, num_classes=1).eval()  # the head is not used: features only
    features, classes = {}, None
    for split in (args.train_split, args.val_split):
        try:
            dataset = AudioVideoDataset(str(data), split, audio_from=datamodule.audio_from, pipeline=pipeline)
        except (ValueError, FileNotFoundError) as error:
            raise UsageError(str(error).splitlines()[0]) from None
        if len(dataset) == 0 or not dataset.has_labels:
            raise UsageError(f"'{data / split}' holds no labelled clips (class folders of videos)")
        names = list(dataset.classes.names) if hasattr(dataset.classes, "names") else list(dataset.classes)
        if classes is not None and names != classes:
            raise UsageError(f"the class folders of '{args.val_split}' and '{args.train_split}' differ")
        classes = names
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
        features[split] = extract_features(
            net, _labelled(_batches(loader, split), data / split), feature_fn=_fine_tuning_features
        )
    return features[args.train_split], features[args.val_split], classes


def _fine_tuning_features(net, batch: dict):
    """What the fine-tuning head sees (``ClassifierNet.features``), through a LayerNorm without parameters."""
    import torch.nn.functional as F

    pooled = net.features(batch).float()  # [B, D]
    return F.layer_norm(pooled, pooled.shape[-1:])


def _labelled(batches, where: Path):
    """(batch, class index) pairs: the multi-hot labels of single-label clips as indices."""
    for batch in batches:
        label = batch["label"]
        if label.dim() == 2:
            if not bool((label.sum(dim=1) == 1).all()):
                raise UsageError(
                    f"kNN needs one label per sample; '{where}' has clips with {int(label.sum(dim=1).max())} labels"
                )
            label = label.argmax(dim=1)
        yield batch, label


def _batches(loader, split: str):
    """The loader's batches; a run of undecodable clips (e.g. shorter than the window) stops with one line."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError as error:
            raise UsageError(
                f"{split}: {str(error).splitlines()[0]} (clip sizes: --config RECIPE, --duration, --video-fps)"
            ) from None
        yield batch


def _vote(args: argparse.Namespace, data: Path, loaded, train: tuple, val: tuple, classes: list) -> dict:
    from unveil.finetune.knn import knn_accuracy

    (train_features, train_labels), (val_features, val_labels) = train, val
    top1 = knn_accuracy(
        train_features,
        train_labels,
        val_features,
        val_labels,
        len(classes),
        ks=args.k,
        temperature=args.temperature,
    )
    return {
        "checkpoint": str(args.checkpoint),
        "source": loaded.source,
        "kind": loaded.kind,
        "data": str(data),
        "train_samples": len(train_labels),
        "val_samples": len(val_labels),
        "classes": len(classes),
        "temperature": args.temperature,
        "top1": top1,
    }


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        result = run_knn(args)
    except UsageError as error:
        sys.stderr.write(f"unveil knn: error: {error}\n")
        return 2
    print(
        f"kNN (cosine, T={result['temperature']}) of {result['source']} ({result['kind']}) on {result['data']}: "
        f"{result['train_samples']} train -> {result['val_samples']} val, {result['classes']} classes"
    )
    for k, accuracy in result["top1"].items():
        print(f"  k={k:<4d} top-1 {accuracy:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
