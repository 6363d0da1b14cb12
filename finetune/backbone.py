"""One place that builds a backbone from any starting point unveil makes, and says which keys it loaded.

    from unveil.finetune.backbone import load_pretrained_backbone

    loaded = load_pretrained_backbone("exports/hiera_t_mae.pt", num_classes=8)          # unveil export
    loaded = load_pretrained_backbone("runs/quickstart/version_0/checkpoints/last.ckpt")  # pretraining .ckpt
    loaded = load_pretrained_backbone("hiera_base_224.pth", model="hiera_base_224")       # official Hiera
    loaded = load_pretrained_backbone("mavil.ckpt", modality="audio")                     # a MAViL encoder
    loaded = load_pretrained_backbone("last.ckpt", random_init=True)   # same architecture, no weights
    print(loaded.summary()); model = loaded.model

Starting points:

- a file of ``unveil export --format unveil|safetensors`` (it names its architecture);
- a Lightning ``.ckpt`` of ``MAEPretrainModule`` (a Hiera backbone) or of the MAViL modules (an
  ``AudioEncoder``, a ``VideoEncoder``, or both with the fusion blocks: ``modality="audio_video"``); the
  architecture comes from the checkpoint's record, else the run's ``config.yaml``;
- a Hiera state dict in official, timm or SAM 2 layout (``{"model_state": ...}`` from facebookresearch/hiera),
  with ``model`` naming the factory that builds it (``hiera_base_224``).

What is never loaded: the MAE decoder, mask token and ``encoder_norm``; MAViL's decoders and projection
heads. What starts new: the classifier (and, from an MAE, Hiera's final ``norm``). Every other model key
must come from the file: a missing, unexpected or wrongly shaped key raises ``ValueError`` with one line
naming the file, before any training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from unveil.common.checkpoints import (
    ARCHITECTURE_KEY,
    Architecture,
    architecture_from_run_config,
    backbone_from_object,
    build_model,
    find_run_config,
    is_lightning_checkpoint,
    read_checkpoint,
    resolve_model,
)

__all__ = ["MODALITIES", "AudioVideoBackbone", "PretrainedBackbone", "load_pretrained_backbone"]

MODALITIES = ("audio", "video", "audio_video")
"""What a MAViL checkpoint can start: one encoder, or both encoders and the fusion blocks."""
_HIERA = "unveil.models.hiera.Hiera"
_MAE = "unveil.models.mae.MaskedAutoencoderHiera"
_MAVIL = "unveil.models.mavil.MAViL"
_ENCODERS = {"audio": "unveil.models.mavil.AudioEncoder", "video": "unveil.models.mavil.VideoEncoder"}
_HIERA_NEW = r"^(norm|head)\."  # what a backbone file may lack: the final norm and the classifier


class AudioVideoBackbone(nn.Module):
    """MAViL's audio and video encoders and its fusion blocks, for fused audio-video classification.

    ``forward(fbank [B, 1, F, M], video [B, 3, T, H, W])`` → ``(audio [B, 1 + Na, D], video [B, 1 + Nv, D])``:
    each modality encoded on its own, then joint attention over both (``MAViL.fuse``), CLS first.
    """

    def __init__(self, mavil: nn.Module):
        super().__init__()
        self.audio_encoder = mavil.audio_encoder
        self.video_encoder = mavil.video_encoder
        self.fusion_blocks = mavil.fusion_blocks
        self.fusion_norm = mavil.fusion_norm
        self.embed_dim = mavil.embed_dim

    @property
    def depth(self) -> int:
        return len(self.audio_encoder.blocks)

    def forward(self, fbank: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        audio_tokens = self.audio_encoder.forward_features(fbank)
        video_tokens = self.video_encoder.forward_features(video)
        n_audio = audio_tokens.shape[1]
        x = torch.cat([audio_tokens, video_tokens], dim=1)  # [B, 1 + Na + 1 + Nv, D]
        for block in self.fusion_blocks:
            x = block(x)
        x = self.fusion_norm(x)
        return x[:, :n_audio], x[:, n_audio:]

    def no_weight_decay(self) -> set[str]:
        return {f"{m}_encoder.{n}" for m in ("audio", "video") for n in ("cls_token", "pos_embed")}


@dataclass
class PretrainedBackbone:
    """A built backbone and what its weights came from.

    Attributes:
        model: ``Hiera`` (image or video; with a classifier when ``num_classes`` > 0), ``AudioEncoder``,
            ``VideoEncoder`` or :class:`AudioVideoBackbone`.
        kind: ``"hiera"``, ``"audio"``, ``"video"`` or ``"audio_video"``.
        loaded: keys of ``model.state_dict()`` taken from the file.
        new: keys of ``model.state_dict()`` left at their initialisation (to be trained).
        ignored: keys of the file not used (decoders, heads of pretraining), with the reason.
        source: the file, or ``"random init"``.
        architecture: the class and arguments the model was built with.
    """

    model: nn.Module
    kind: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    source: str = ""
    architecture: Architecture | None = None

    def summary(self) -> str:
        """A few lines: how many keys loaded, which are new, what was left out."""

        def few(keys) -> str:
            keys = list(keys)
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")

        lines = [f"{self.source}: {type(self.model).__name__} ({self.kind}), {len(self.loaded)} keys loaded"]
        lines.append(f"  new (trained from their initialisation): {few(self.new) or 'none'}")
        if self.ignored:
            lines.append(f"  not used: {few(self.ignored)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- reading the file


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _read_source(path: Path, model: str | None) -> tuple[dict[str, torch.Tensor], Architecture | None]:
    """``(state, architecture)`` of a file: a backbone export, a Lightning checkpoint (its model's keys, the
    module's ``model.`` prefix removed), or a plain state dict (architecture None unless ``model`` is given)."""
    from unveil.models.convert import unwrap_state_dict

    obj, metadata = read_checkpoint(path)
    origin = f"'{path}'"
    exported = backbone_from_object(obj, metadata, origin)
    if exported is not None:
        return exported
    if is_lightning_checkpoint(obj):
        state = _strip(obj["state_dict"], "model.")
        if not state:
            raise ValueError(
                f"{origin}: a Lightning checkpoint without 'model.*' weights (not an unveil module)"
            )
        record = obj.get(ARCHITECTURE_KEY)
        if isinstance(record, Mapping) and record.get("class_path"):
            return state, Architecture(str(record["class_path"]), dict(record.get("init_args") or {}), origin)
        config = find_run_config(path)
        if config is not None:
            return state, architecture_from_run_config(config)
        if model is None:
            raise ValueError(
                f"{origin} records no architecture and has no config.yaml beside it: give model= "
                "(e.g. hiera_base_224)"
            )
        return state, None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{origin} holds a {type(obj).__name__}, not a state dict or checkpoint")
    try:
        return unwrap_state_dict(obj), None
    except ValueError as error:
        raise ValueError(f"{origin}: {error}") from None


def _named_architecture(model: str, origin: str) -> Architecture:
    """The architecture a factory or class of unveil.models builds with its defaults (built on the meta
    device: no memory, no initialisation)."""
    from unveil.common.checkpoints import architecture_of

    with torch.device("meta"):
        built = resolve_model(model)()
    found = architecture_of(built)
    if found is None:
        raise ValueError(f"model '{model}' does not record its constructor arguments")
    return Architecture(found.class_path, found.init_args, origin)


# ---------------------------------------------------------------------------------------- building


def _check(state: Mapping, expected: Mapping, allow_new: str, origin: str) -> None:
    """Every key of ``expected`` not matching ``allow_new`` must be in ``state`` with its shape; no extra key."""
    from unveil.common.checkpoints import describe_mismatch

    problem = describe_mismatch(state, expected, allow_missing=allow_new)
    if problem:
        raise ValueError(f"{origin} does not fit the backbone it names: {problem}")


def _load(model: nn.Module, state: Mapping[str, torch.Tensor], allow_new: str, origin: str):
    expected = model.state_dict()
    _check(state, expected, allow_new, origin)
    model.load_state_dict(state, strict=False)
    loaded = [k for k in expected if k in state]
    new = [k for k in expected if k not in state]
    return loaded, new


def _hiera(state, architecture, overrides, num_classes, random_init, origin) -> PretrainedBackbone:
    from unveil.models.convert import hiera_backbone_config, to_official

    config = hiera_backbone_config(architecture.init_args, num_classes)
    config.update(overrides)
    built = build_model(Architecture(_HIERA, config, origin), device="cpu")
    result = PretrainedBackbone(
        built, "hiera", source=origin, architecture=Architecture(_HIERA, config, origin)
    )
    if random_init:
        result.new = list(built.state_dict())
        return result
    try:
        official, report = to_official(state)  # drops the MAE decoder, mask token and encoder_norm
    except ValueError as error:
        raise ValueError(f"{origin} is not a Hiera checkpoint: {error}") from None
    # a file's classifier loads only into a classifier of the same size; otherwise the head starts anew
    for key in [k for k in official if k.startswith("head.")]:
        if key not in built.state_dict() or official[key].shape != built.state_dict()[key].shape:
            report.dropped[key] = "classifier of another size"
            del official[key]
    result.loaded, result.new = _load(built, official, _HIERA_NEW, origin)
    result.ignored = dict(report.dropped)
    return result


def _mavil_part(state, architecture, modality, overrides, random_init, origin) -> PretrainedBackbone:
    if modality not in MODALITIES:
        raise ValueError(f"{origin} is a MAViL checkpoint: give modality= one of {', '.join(MODALITIES)}")
    args = dict(architecture.init_args)
    if "drop_path_rate" in overrides:
        args["drop_path_rate"] = overrides.pop("drop_path_rate")
    if overrides:
        raise ValueError(f"unknown settings for a MAViL backbone: {', '.join(sorted(overrides))}")
    mavil = build_model(Architecture(_MAVIL, args, origin), device="cpu")
    if modality == "audio_video":
        model: nn.Module = AudioVideoBackbone(mavil)
        prefixes: tuple[str, ...] = ("audio_encoder.", "video_encoder.", "fusion_blocks.", "fusion_norm.")
        wanted = {k: v for k, v in state.items() if k.startswith(prefixes)}
    else:
        model = getattr(mavil, f"{modality}_encoder")
        prefixes = (f"{modality}_encoder.",)
        wanted = _strip(state, prefixes[0])
    result = PretrainedBackbone(model, modality, source=origin)
    from unveil.common.checkpoints import architecture_of

    result.architecture = architecture_of(model) or Architecture(_MAVIL, args, origin)
    if random_init:
        result.new = list(model.state_dict())
        return result
    if not wanted:
        raise ValueError(f"{origin} has no {modality} weights of a MAViL model")
    result.loaded, result.new = _load(model, wanted, r"$^", origin)
    result.ignored = {k: "not part of this backbone" for k in state if not k.startswith(prefixes)}
    return result


def _encoder(state, architecture, overrides, random_init, origin) -> PretrainedBackbone:
    kind = "audio" if architecture.class_path.endswith("AudioEncoder") else "video"
    args = {**architecture.init_args, **overrides}
    model = build_model(Architecture(architecture.class_path, args, origin), device="cpu")
    result = PretrainedBackbone(
        model, kind, source=origin, architecture=Architecture(architecture.class_path, args)
    )
    if random_init:
        result.new = list(model.state_dict())
        return result
    result.loaded, result.new = _load(model, state, r"$^", origin)
    return result


def load_pretrained_backbone(
    path: str | Path | None = None,
    model: str | None = None,
    modality: str | None = None,
    num_classes: int = 0,
    random_init: bool = False,
    **overrides: Any,
) -> PretrainedBackbone:
    """Build the backbone of a checkpoint or export and load its weights (see the module docstring).

    Args:
        path: the file; None builds ``model`` at random (``random_init`` implied).
        model: a factory or class of ``unveil.models`` (``hiera_base_224``): needed for plain state dicts
            (official Hiera checkpoints), otherwise the file names its own architecture.
        modality: for MAViL checkpoints: ``"audio"``, ``"video"`` or ``"audio_video"``.
        num_classes: Hiera only: a classifier of this many classes (0: none, only the final norm).
        random_init: build the same architecture and leave every weight at its initialisation (the
            baseline of an evaluation).
        overrides: constructor arguments that change training behaviour, not shapes, e.g.
            ``drop_path_rate``, ``head_dropout``, ``q_pool`` (Hiera: the MAE pools twice, classifiers three
            times; the weights are the same).

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file, when it is not a checkpoint unveil can start from, or when its
            weights do not fit their architecture.
    """
    if path is None:
        if model is None:
            raise ValueError("load_pretrained_backbone: give a checkpoint path or a model name")
        architecture, state, origin, random_init = (
            _named_architecture(model, "random init"),
            {},
            "random init",
            True,
        )
    else:
        path = Path(path)
        origin = f"'{path}'"
        state, architecture = _read_source(path, model)
        if architecture is None:
            architecture = _named_architecture(model, origin) if model else None
        if architecture is None:
            raise ValueError(
                f"{origin} is a plain state dict: give model= (the factory that builds it, e.g. hiera_base_224)"
            )
        architecture = Architecture(architecture.class_path, architecture.init_args, origin)
        if random_init:
            origin = f"random init (architecture of {origin})"
    class_path = architecture.class_path
    if class_path in (_HIERA, _MAE) or re.match(r"^unveil\.models\.hiera\.", class_path):
        if modality not in (None, "image", "video"):
            raise ValueError(f"{architecture.origin}: a Hiera has no modality {modality!r}")
        return _hiera(state, architecture, overrides, num_classes, random_init, origin)
    if class_path == _MAVIL:
        return _mavil_part(state, architecture, modality, overrides, random_init, origin)
    if class_path in _ENCODERS.values():
        if modality not in (None, "audio" if class_path.endswith("AudioEncoder") else "video"):
            raise ValueError(
                f"{architecture.origin} holds a {class_path.rsplit('.', 1)[-1]}, not {modality!r}"
            )
        return _encoder(state, architecture, overrides, random_init, origin)
    raise ValueError(f"{architecture.origin}: cannot start a classifier from a {class_path}")
