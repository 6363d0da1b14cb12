"""``unveil export``: write the backbone of a checkpoint for another codebase.

    unveil export runs/mae/version_0/checkpoints/last.ckpt --format timm --out hiera_mae.pth
    unveil export last.ckpt --format sam2 --out trunk.pt      # needs abs_win_pos_embed: true
    unveil export mavil.ckpt --format timm --out mavil.pth    # → mavil.audio.pth and mavil.video.pth
    unveil export mavil.ckpt --format timm --encoder audio --out audio_vit.pth

CKPT is a Lightning checkpoint of ``MAEPretrainModule``, ``MAViLPretrainModule`` or ``MAViLSelfTrainModule``,
a file written by ``unveil export --format unveil|safetensors``, or a Hiera state dict in official, timm or
SAM 2 layout. Only the backbone is written: the MAE decoder (with its fusion heads, mask token and
``encoder_norm``), or MAViL's fusion encoder, decoders and projection heads, are dropped, and the command
lists what it dropped. It prints the model to build in the target codebase and how to load the file.

=============  ==============================================================================================
unveil         torch file ``{"format": "unveil-backbone", "class_path", "config", "model_state", "source"}``
               (see :mod:`unveil.common.checkpoints`); ``build_backbone(path)`` returns the model
hiera          ``{"model_state": ...}`` in official facebookresearch/hiera keys (the ``hiera`` package)
timm           a plain state dict for timm: ``hiera_*`` / ``timm.models.hiera.Hiera`` (Hiera),
               ``VisionTransformer`` (MAViL encoders)
sam2           ``{"model": ...}`` with ``image_encoder.trunk.*`` keys: SAM 2's image-encoder trunk and timm's
               ``sam2_hiera_*`` (absolute-win position embeddings only)
safetensors    the ``unveil`` weights as safetensors; ``format``, ``class_path`` and JSON ``config`` and
               ``source`` in the metadata
=============  ==============================================================================================

The architecture comes from the checkpoint (the pretraining modules record it when they save), else from
LightningCLI's ``config.yaml`` of the run (in the checkpoint's folder or up to three above), else from
``--config`` / ``--model``. The weights are checked against it before anything is written. MAViL checkpoints
hold two encoders: ``--encoder both`` (the default) writes ``OUT`` with ``.audio`` / ``.video`` before its
suffix, ``--encoder audio|video`` writes ``OUT`` itself.

Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors: a file that pickles anything
but tensors and plain containers is refused. Mistakes (a wrong kind of checkpoint, an architecture that
does not match the weights, a format the model cannot take) stop the command with one line and exit 2.

In Python, :func:`export_backbone` ``(model, format, out)`` is the one way to write a backbone: the command
calls it with what it read from CKPT, the :class:`ExportBackbone` callback with the trained model in memory.
:data:`WRITERS` is its table from format to writer. timm's ``save_for_hf`` (config.json + safetensors) is not
used for ``--format timm``: it needs a registered timm model name, and timm registers no video Hiera and no
MAViL encoder (the video one takes unveil's ``TubeletEmbed`` as ``embed_layer``, which config.json cannot
name), so the printed constructor covers every backbone and save_for_hf would cover only image Hieras.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import nn
from unveil.launch.cli import OneLineParser, UsageError

FORMATS = ("unveil", "hiera", "timm", "sam2", "safetensors")
ENCODERS = ("audio", "video", "both")
_KEY_FORMAT = {
    "unveil": "official",
    "hiera": "official",
    "safetensors": "official",
    "timm": "timm",
    "sam2": "sam2",
}
_BACKBONE_ONLY = r"^(norm|head)\."  # what a backbone-only file may leave out of a Hiera


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        error_format="{} (see 'unveil export --help')",
        prog="unveil export",
        description="Write the backbone of a checkpoint (the MAE decoder, MAViL's fusion encoder, decoders "
        "and heads dropped) for another codebase.",
    )
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="Lightning .ckpt of a pretraining module, an unveil export, or a Hiera state dict",
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write (see below)")
    parser.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="output file (MAViL with --encoder both: PATH with .audio/.video before its suffix)",
    )
    parser.add_argument(
        "--encoder", choices=ENCODERS, default=None, help="MAViL: which encoder to write (default: both)"
    )
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="take the architecture from this LightningCLI config.yaml or recipe (default: the one "
        "recorded in the checkpoint, else the run's config.yaml)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="the architecture is this unveil.models factory or class with its defaults (e.g. "
        "hiera_base_224, mae_hiera_base_224), for files that record none",
    )
    parser.add_argument(
        "--keep-head",
        action="store_true",
        help="Hiera: keep the final norm and classifier when the checkpoint has them",
    )
    parser.add_argument(
        "--encoder-norm-as-norm",
        action="store_true",
        help="Hiera MAE: keep encoder_norm as the backbone's final norm (as timm does); "
        "dropped with the decoder by default",
    )
    parser.epilog = "formats: " + "; ".join(
        f"{name}: {what}"
        for name, what in (
            ("unveil", "unveil keys + config, torch file"),
            ("hiera", "official facebookresearch/hiera keys"),
            ("timm", "timm state dict"),
            ("sam2", "SAM 2 image_encoder.trunk.* keys"),
            ("safetensors", "unveil keys, config in the metadata"),
        )
    )
    return parser


# ---------------------------------------------------------------------------------- the source checkpoint


@dataclass
class Source:
    """What the command reads: the weights (keys as stored, the model's under ``prefix``), where the
    architecture comes from, and a description for messages."""

    path: Path | None  # None: a model in memory
    description: str
    state: dict
    prefix: str = ""
    architecture: Any = None  # unveil.common.checkpoints.Architecture
    info: dict = field(default_factory=dict)
    model: Any = None  # the architecture's model: on the meta device when the weights come from a file

    @property
    def name(self) -> str:
        """The source in messages: the quoted path, or the in-memory model's description."""
        return f"'{self.path}'" if self.path is not None else self.description

    @property
    def model_state(self) -> dict:
        """The model's weights with the prefix removed."""
        n = len(self.prefix)
        return {k[n:]: v for k, v in self.state.items() if k.startswith(self.prefix)}


def read_source(path: Path) -> Source:
    """Read CKPT safely and tell what it is; ValueError (one line) for anything that is not a checkpoint of a
    model unveil exports."""
    from unveil.common.checkpoints import (
        ARCHITECTURE_KEY,
        Architecture,
        backbone_from_object,
        is_lightning_checkpoint,
        read_checkpoint,
    )
    from unveil.models.convert import unwrap_state_dict

    if path.is_dir():
        found = sorted(path.rglob("*.ckpt"))
        hint = f" (e.g. {found[-1]})" if found else ""
        raise ValueError(f"'{path}' is a folder: give the checkpoint file{hint}")
    obj, metadata = read_checkpoint(path)
    exported = backbone_from_object(obj, metadata, f"'{path}'")
    if exported is not None:
        state, architecture = exported
        previous = obj.get("source") if metadata is None else None  # provenance of an export of an export
        return Source(
            path,
            "unveil backbone",
            state,
            "",
            architecture,
            info={"exported_from": dict(previous)} if isinstance(previous, dict) else {},
        )
    if is_lightning_checkpoint(obj):
        state = dict(obj["state_dict"])
        if not any(k.startswith("model.") for k in state):
            first = ", ".join(list(state)[:4]) or "(empty)"
            raise ValueError(
                f"'{path}' is not a checkpoint of an unveil pretraining module: its state_dict has no "
                f"'model.*' keys (first keys: {first}); expected MAEPretrainModule, MAViLPretrainModule or "
                "MAViLSelfTrainModule"
            )
        record = obj.get(ARCHITECTURE_KEY)
        architecture = None
        if (
            isinstance(record, dict)
            and isinstance(record.get("init_args"), dict)
            and record.get("class_path")
        ):
            architecture = Architecture(
                str(record["class_path"]), dict(record["init_args"]), "the checkpoint"
            )
        info = {k: obj[k] for k in ("epoch", "global_step") if isinstance(obj.get(k), int)}
        steps = f", epoch {info['epoch']}, step {info['global_step']}" if len(info) == 2 else ""
        return Source(path, f"Lightning checkpoint{steps}", state, "model.", architecture, info)
    if not isinstance(obj, dict):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a checkpoint")
    try:
        state = dict(obj) if metadata is not None else unwrap_state_dict(obj)
    except ValueError as error:  # e.g. a training checkpoint of another framework
        raise ValueError(f"'{path}' is not a checkpoint unveil can export: {error}") from None
    return Source(path, "safetensors state dict" if metadata is not None else "state dict", state)


def _family_of_keys(keys) -> str:
    if any(k.startswith(("audio_encoder.", "video_encoder.")) for k in keys):
        return "MAViL"
    if "cls_token" in keys:
        return "ViT encoder"
    return "Hiera"


def _family_of_model(model) -> str | None:
    from unveil.models.hiera import Hiera
    from unveil.models.mavil import MAViL
    from unveil.models.vit import ViTEncoder

    for cls, family in ((Hiera, "Hiera"), (MAViL, "MAViL"), (ViTEncoder, "ViT encoder")):
        if isinstance(model, cls):
            return family
    return None


def resolve_architecture(source: Source, config: str | None, model_name: str | None):
    """The architecture to export with: ``--model``, ``--config``, the checkpoint's record, or the run's
    config.yaml, in that order; None when there is none. Returns ``(architecture, model on the meta device)``,
    the architecture normalised to the built model's class and full constructor arguments."""
    from unveil.common.checkpoints import (
        Architecture,
        architecture_from_run_config,
        architecture_of,
        build_model,
        find_run_config,
    )

    architecture = None
    if model_name:
        architecture = Architecture(model_name, {}, f"--model {model_name}")
    elif config:
        architecture = architecture_from_run_config(_config_path(config))
    elif source.architecture is not None:
        architecture = source.architecture
    elif source.prefix:  # a Lightning checkpoint without a record: LightningCLI's copy of the run config
        run_config = find_run_config(source.path)
        if run_config is not None:
            architecture = architecture_from_run_config(run_config)
    if architecture is None:
        return None, None
    model = build_model(architecture)
    normalised = architecture_of(model)
    if normalised is None:
        raise ValueError(
            f"{type(model).__name__} (from {architecture.origin}) does not record its constructor "
            "arguments: unveil export supports Hiera, MaskedAutoencoderHiera, MAViL and its encoders"
        )
    normalised.origin = architecture.origin
    return normalised, model


def _config_path(value: str) -> Path:
    path = Path(value)
    if path.is_file():
        return path
    from unveil.launch.recipes import RecipeNotFoundError, resolve_recipe

    try:
        return resolve_recipe(value)
    except RecipeNotFoundError:
        raise ValueError(f"--config {value}: no such file or recipe") from None


def _check_against(source: Source, state: dict, expected: dict, allow_missing: str | None) -> None:
    from unveil.common.checkpoints import describe_mismatch

    problem = describe_mismatch(state, expected, allow_missing)
    if problem:
        architecture = source.architecture
        raise ValueError(
            f"{source.name} does not match the architecture from {architecture.origin} "
            f"({architecture.class_name}): {problem}"
        )


# ---------------------------------------------------------------------------------------- writing


@dataclass
class ExportOptions:
    """What ``unveil export`` can choose besides the format (its flags ``--encoder``, ``--keep-head`` and
    ``--encoder-norm-as-norm``)."""

    encoder: str | None = None
    keep_head: bool = False
    encoder_norm_as_norm: bool = False


@dataclass
class Written:
    """One file a writer wrote, and how each target codebase loads it: ``(codebase, ModelSpec or None, the
    line that loads the file)``."""

    path: Path
    loads: list[tuple[str, Any, str]]


def _save_torch(obj, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


def _untrained(state: dict, heads: Sequence[str]) -> str:
    missing = [h for h in heads if f"{h}.weight" not in state]
    return f"  # {', '.join(h + '.*' for h in missing)} stay untrained" if missing else ""


def _write_unveil_file(
    path: Path, state: dict, architecture, info: dict, safetensors: bool, what: str
) -> Written:
    from unveil.common.checkpoints import save_backbone

    save_backbone(path, state, architecture, info, safetensors=safetensors)
    return Written(
        path, [(f"unveil{what}", None, f"model = unveil.common.checkpoints.build_backbone({str(path)!r})")]
    )


def _hiera_architecture(config):
    from unveil.common.checkpoints import Architecture

    return Architecture("unveil.models.hiera.Hiera", config)


def _hiera_unveil(path: Path, state: dict, config, info: dict) -> Written:
    return _write_unveil_file(path, state, _hiera_architecture(config), info, False, "")


def _hiera_safetensors(path: Path, state: dict, config, info: dict) -> Written:
    return _write_unveil_file(path, state, _hiera_architecture(config), info, True, "")


def _hiera_official(path: Path, state: dict, config, info: dict) -> Written:
    from unveil.launch.export_targets import official_hiera_spec

    if config is not None:
        spec = official_hiera_spec(config)
    elif "pos_embed_win" in state:
        raise ValueError(
            "the official hiera package has no absolute-win position embeddings (pos_embed_win): "
            "export this backbone with --format unveil, timm or sam2"
        )
    else:
        spec = None
    _save_torch({"model_state": state}, path)
    line = (
        f"model.load_state_dict(torch.load({str(path)!r}, weights_only=True)['model_state'], strict=False)"
        + _untrained(state, ("norm", "head.projection"))
    )
    return Written(path, [("the hiera package", spec, line)])


def _hiera_timm(path: Path, state: dict, config, info: dict) -> Written:
    from unveil.launch.export_targets import timm_hiera_spec

    _save_torch(state, path)
    line = f"model.load_state_dict(torch.load({str(path)!r}, weights_only=True), strict=False)" + _untrained(
        state, ("head.norm", "head.fc")
    )
    return Written(path, [("timm", timm_hiera_spec(config) if config is not None else None, line)])


def _hiera_sam2(path: Path, state: dict, config, info: dict) -> Written:
    from unveil.launch.export_targets import sam2_trunk_specs

    timm_spec, sam2_spec = sam2_trunk_specs(config) if config is not None else (None, None)
    _save_torch({"model": state}, path)
    name = repr(str(path))
    return Written(
        path,
        [
            (
                "timm",
                timm_spec,
                (
                    "model.load_state_dict(timm.models.hieradet_sam2.checkpoint_filter_fn(torch.load("
                    f"{name}, weights_only=True), prefix='image_encoder.trunk.'), strict=False)"
                    "  # head.* stay untrained"
                ),
            ),
            (
                "SAM 2 (the model's image_encoder.trunk)",
                sam2_spec,
                (
                    f"sam2_model.load_state_dict(torch.load({name}, weights_only=True)['model'], "
                    "strict=False)  # sets the trunk only"
                ),
            ),
        ],
    )


def _vit_unveil(path: Path, state: dict, encoder, info: dict, what: str) -> Written:
    from unveil.common.checkpoints import architecture_of

    return _write_unveil_file(path, state, architecture_of(encoder), info, False, f" ({what})")


def _vit_safetensors(path: Path, state: dict, encoder, info: dict, what: str) -> Written:
    from unveil.common.checkpoints import architecture_of

    return _write_unveil_file(path, state, architecture_of(encoder), info, True, f" ({what})")


def _vit_timm(path: Path, state: dict, encoder, info: dict, what: str) -> Written:
    from unveil.launch.export_targets import timm_vit_spec
    from unveil.models.mavil import mavil_encoder_to_timm

    _save_torch(state, path)
    spec = timm_vit_spec(mavil_encoder_to_timm(encoder)[1])
    return Written(
        path,
        [(f"timm ({what})", spec, f"model.load_state_dict(torch.load({str(path)!r}, weights_only=True))")],
    )


# The one table from format to writer, per model family. Hiera writers take the backbone's weights (in the
# format's key layout) and its Hiera arguments (None when the source records none); ViT writers take one
# encoder's weights (timm keys for timm, unveil keys otherwise) and the encoder module.
WRITERS: dict[str, dict[str, Callable[..., Written]]] = {
    "Hiera": {
        "unveil": _hiera_unveil,
        "hiera": _hiera_official,
        "timm": _hiera_timm,
        "sam2": _hiera_sam2,
        "safetensors": _hiera_safetensors,
    },
    "ViT": {"unveil": _vit_unveil, "timm": _vit_timm, "safetensors": _vit_safetensors},
}
assert all(set(table) <= set(FORMATS) for table in WRITERS.values())


def _describe(state: dict) -> str:
    params = sum(v.numel() for v in state.values())
    return f"{len(state)} tensors, {params / 1e6:.2f}M parameters"


def _print_report(report, prefix: str) -> None:
    """What the backbone keeps, renames and drops; dropped keys grouped by module
    (``model.decoder_blocks.*``)."""
    renamed = {k: v for k, v in report.renamed.items() if k.removeprefix(prefix) != v}  # not the prefix alone
    print(
        f"{report.source} -> {report.target}: dropped {len(report.dropped)} tensors, renamed {len(renamed)}"
        + (f" (keys under '{prefix}' in the checkpoint)" if prefix else "")
    )
    by_reason: dict[str, dict[str, int]] = {}
    for key, reason in report.dropped.items():
        head, dot, _ = key.removeprefix(prefix).partition(".")
        group = prefix + head + (".*" if dot else "")
        counts = by_reason.setdefault(reason, {})
        counts[group] = counts.get(group, 0) + 1
    for reason, groups in by_reason.items():
        shown = ", ".join(f"{g} ({n})" if n > 1 else g for g, n in groups.items())
        print(f"  dropped, {reason}: {shown}")
    for note in report.notes:
        print(f"  note: {note}")


def _print_loading(loads, unknown: bool = False) -> None:
    """``loads``: (codebase, ModelSpec or None, the line that loads the file), one per target codebase."""
    notes = []
    for codebase, spec, line in loads:
        print(f"load it into {codebase}:")
        if spec is not None:
            print(f"  {'trunk' if 'trunk' in codebase else 'model'} = {spec.code()}")
            notes += spec.notes
        elif unknown:
            print(
                "  model = ...  # the checkpoint records no architecture: "
                "--config or --model prints the exact one"
            )
        print(f"  {line}")
    for note in dict.fromkeys(notes):
        print(f"note: {note}")


def _holds_weights(source: Source) -> bool:
    """Whether the source's model is the one whose weights are exported (a model in memory), rather than one
    built from a recorded architecture, on the meta device, that the weights must fit."""
    model = source.model
    return source.path is None and model is not None and not any(p.is_meta for p in model.parameters())


def _source_info(source: Source) -> dict:
    info = {"checkpoint": str(source.path), **source.info} if source.path is not None else dict(source.info)
    if source.architecture is not None:
        info.update(model=source.architecture.class_path, architecture_from=source.architecture.origin)
    return info


def _export_hiera(source: Source, format: str, out: Path, options: ExportOptions) -> list[Path]:
    """A Hiera backbone (from an MAE, a classifier, or another export)."""
    from unveil.common.checkpoints import build_model
    from unveil.models.convert import convert_state_dict, detect_format, hiera_backbone_config, to_official
    from unveil.models.hiera import Hiera
    from unveil.models.mae import MaskedAutoencoderHiera

    architecture, model = source.architecture, source.model
    if options.encoder is not None:
        raise ValueError(f"--encoder applies to MAViL checkpoints; {source.name} holds a Hiera")
    state = source.model_state
    try:
        layout = detect_format(state)
    except ValueError as error:
        raise ValueError(f"{source.name} is not a Hiera, MAE-Hiera or MAViL checkpoint: {error}") from None
    if model is not None and not _holds_weights(source):  # check the weights against the architecture
        if isinstance(model, MaskedAutoencoderHiera) and layout == "official":
            _check_against(source, state, model.state_dict(), None)  # decoder included
        else:
            # in official names without MAE or SAM 2 extras, against the Hiera backbone (final norm and
            # head optional)
            official, _ = to_official(state, source=layout)
            backbone = (
                model
                if type(model) is Hiera
                else build_model(
                    _hiera_architecture(
                        hiera_backbone_config(
                            architecture.init_args, architecture.init_args.get("num_classes", 0)
                        )
                    )
                )
            )
            _check_against(source, official, backbone.state_dict(), _BACKBONE_ONLY)
    elif model is None and format in ("unveil", "safetensors"):
        raise ValueError(
            f"{source.name} records no architecture and no config.yaml was found beside it: "
            f"--format {format} stores the model config, so give --config (the run's config.yaml or its "
            "recipe) or --model (e.g. hiera_base_224)"
        )
    if options.encoder_norm_as_norm and "encoder_norm.weight" not in state:
        raise ValueError(f"--encoder-norm-as-norm: {source.name} has no encoder_norm (not an MAE checkpoint)")

    backbone_state, report = convert_state_dict(
        source.state,
        _KEY_FORMAT[format],
        source=layout,
        prefix=source.prefix or None,
        # the MAE has no classifier: keeping the "head" keeps only the final norm made from encoder_norm
        keep_head=options.keep_head or options.encoder_norm_as_norm,
        encoder_norm_as_norm=options.encoder_norm_as_norm,
    )
    head = backbone_state.get("head.projection.weight", backbone_state.get("head.fc.weight"))
    num_classes = head.shape[0] if head is not None else 0
    config = hiera_backbone_config(architecture.init_args, num_classes) if architecture is not None else None
    written = WRITERS["Hiera"][format](out, backbone_state, config, _source_info(source))
    _print_report(report, source.prefix)
    print(f"wrote {out} ({format}: {_describe(backbone_state)})")
    _print_loading(written.loads, unknown=architecture is None)
    return [written.path]


def _export_vit(source: Source, format: str, out: Path, options: ExportOptions, family: str) -> list[Path]:
    """MAViL's audio and/or video encoder (or one exported encoder)."""
    from unveil.models.convert import MAVIL_ENCODERS, mavil_export_report

    model = source.model
    if format not in WRITERS["ViT"]:
        raise ValueError(
            f"{source.name} holds ViT encoders ({family}), not a Hiera: --format {format} does not "
            f"apply (use {', '.join(WRITERS['ViT'])})"
        )
    if options.keep_head or options.encoder_norm_as_norm:
        raise ValueError("--keep-head and --encoder-norm-as-norm apply to Hiera checkpoints")
    if model is None:
        raise ValueError(
            f"{source.name} records no architecture and no config.yaml was found beside it: "
            "give --config (the run's config.yaml or its recipe) or --model (e.g. mavil_vit_base_patch16)"
        )
    if not _holds_weights(source):  # check the weights, then the model (on the meta device) takes them
        state = source.model_state
        _check_against(source, state, model.state_dict(), None)
        model.load_state_dict(state, strict=True, assign=True)

    if family == "MAViL":
        chosen = MAVIL_ENCODERS if options.encoder in (None, "both") else (options.encoder,)
        _print_report(mavil_export_report(source.state, chosen, format, source.prefix), source.prefix)
        targets = [
            (m, out.with_name(f"{out.stem}.{m}{out.suffix}") if len(chosen) > 1 else out) for m in chosen
        ]
    else:
        if options.encoder not in (None, "both"):
            raise ValueError(f"--encoder: {source.name} holds a single encoder")
        targets = [(None, out)]
    written, loads = [], []
    for modality, path in targets:
        encoder = model if modality is None else getattr(model, f"{modality}_encoder")
        what = f"{modality} encoder" if modality else "encoder"
        state = {k: v.detach() for k, v in encoder.state_dict().items()}  # the keys of timm's ViT too
        files = WRITERS["ViT"][format](path, state, encoder, _source_info(source), what)
        print(f"wrote {path} ({what}, {format}: {_describe(state)})")
        loads += files.loads
        written.append(files.path)
    _print_loading(loads)
    return written


def export_backbone(
    model: nn.Module | Source,
    format: str,
    out: str | Path,
    options: ExportOptions | None = None,
    state: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write the backbone of ``model`` in ``format`` (one of :data:`FORMATS`) to ``out``; returns the written
    paths (MAViL with both encoders: two files, ``.audio`` / ``.video`` before the suffix of ``out``).

    ``model`` is a model in memory (a Hiera, an MAE, MAViL or one of its encoders, which record their
    constructor arguments), or a :class:`Source` read from a checkpoint by ``unveil export``. ``state``: the
    model's weights when the module does not hold them itself (FSDP: the gathered full state dict).
    ``format`` picks the writer in :data:`WRITERS`. Prints what it kept and dropped and how to load each
    file. ValueError (one line) for a format the model cannot take.
    """
    from unveil.common.checkpoints import architecture_of, build_model

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: one of {', '.join(FORMATS)}")
    options = options or ExportOptions()
    out = Path(out)
    if isinstance(model, Source):
        source = model
    else:
        architecture = architecture_of(model)
        if architecture is None:
            raise ValueError(
                f"{type(model).__name__} does not record its constructor arguments: unveil export supports "
                "Hiera, MaskedAutoencoderHiera, MAViL and its encoders"
            )
        architecture.origin = "the model"
        if state is None:
            state = model.state_dict()
        else:  # weights gathered elsewhere (FSDP's full state dict): a model built on the meta device takes them
            model = build_model(architecture)
            model.load_state_dict(state, strict=True, assign=True)
        source = Source(
            None, f"the trained {type(model).__name__}", dict(state), "", architecture, model=model
        )
    keys_family = _family_of_keys(source.model_state)
    family = _family_of_model(source.model) if source.model is not None else keys_family
    if family is None:
        raise ValueError(f"unveil export does not support {source.architecture.class_path}")
    if source.model is not None and family != keys_family:
        raise ValueError(
            f"{source.name} holds a {keys_family} model but the architecture from "
            f"{source.architecture.origin} is {source.architecture.class_name}"
        )
    if family == "Hiera":
        return _export_hiera(source, format, out, options)
    return _export_vit(source, format, out, options, family)


# ---------------------------------------------------------------------------------------- command


def run_export(args: argparse.Namespace) -> list[Path]:
    """Read, check and write; returns the written paths. ValueError / FileNotFoundError for user mistakes."""
    path = Path(args.checkpoint)
    if args.config and args.model:
        raise ValueError("give --config or --model, not both")
    out = Path(args.out)
    if out.exists() and out.resolve() == path.resolve():
        raise ValueError(f"--out {out} is the checkpoint itself")
    source = read_source(path)
    source.architecture, source.model = resolve_architecture(source, args.config, args.model)
    print(f"read {path}: {source.description}")
    if source.architecture is not None:
        print(f"architecture: {source.architecture.class_path} from {source.architecture.origin}")
    options = ExportOptions(args.encoder, args.keep_head, args.encoder_norm_as_norm)
    return export_backbone(source, args.format, out, options)


# ---------------------------------------------------------------------------------------- at the end of a run


class ExportBackbone(pl.Callback):
    """Export the trained backbone when a fit ends, and log it to W&B as a model artifact.

    At the end of training global rank 0 passes the trained model, from memory, to :func:`export_backbone`,
    which writes it into the run's log folder (``backbone.safetensors`` by default; MAViL:
    ``backbone.audio.safetensors`` and ``backbone.video...``). The weights are the strategy's full state dict,
    collected on every rank (a collective under FSDP). With a ``WandbLogger``, the written files become one
    artifact of type ``model`` (name ``backbone-<run id>``, aliases ``latest`` and ``step-<global step>``),
    offline runs included.

    Args:
        format: an ``unveil export`` format (``unveil``, ``hiera``, ``timm``, ``sam2``, ``safetensors``).
        out: the file to write; default ``<trainer.log_dir>/backbone.<ext>``.
        log_artifact: log the files to every attached WandbLogger's run.
    """

    def __init__(
        self, format: str = "safetensors", out: str | None = None, log_artifact: bool = True
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"ExportBackbone.format must be one of {', '.join(FORMATS)}, got {format!r}")
        self.format, self.out, self.log_artifact = format, out, log_artifact
        self.written: list[Path] = []

    def _out(self, trainer) -> Path:
        if self.out is not None:
            return Path(self.out)
        suffix = {"safetensors": ".safetensors", "timm": ".pth", "hiera": ".pth"}.get(self.format, ".pt")
        return Path(trainer.log_dir or trainer.default_root_dir) / f"backbone{suffix}"

    def on_train_end(self, trainer, pl_module) -> None:
        full_state = trainer.strategy.lightning_module_state_dict()  # every rank: gathers under FSDP
        if not trainer.is_global_zero:
            return
        model = pl_module.model
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in full_state.items() if k.startswith(prefix)}
        self.written = export_backbone(model, self.format, self._out(trainer), state=state)
        if self.log_artifact:
            self._log_artifact(trainer)

    def _log_artifact(self, trainer) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            import wandb

            run = logger.experiment
            artifact = wandb.Artifact(
                f"backbone-{run.id}",
                type="model",
                metadata={
                    "format": self.format,
                    "global_step": trainer.global_step,
                    "files": [path.name for path in self.written],
                },
            )
            for path in self.written:
                artifact.add_file(str(path))
            run.log_artifact(artifact, aliases=["latest", f"step-{trainer.global_step}"])


def main(argv: Sequence[str] | None = None) -> int:
    """``unveil export CKPT --format FORMAT --out PATH``; returns the exit status. User mistakes raise
    ``UsageError`` (one line), which ``unveil`` prints with exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    try:
        run_export(args)
    except (ValueError, FileNotFoundError) as error:
        message = str(error).strip()
        raise UsageError(re.sub(r"\s*\n\s*", " ", message) or type(error).__name__) from None
    return 0


if __name__ == "__main__":
    from unveil.launch.cli import main as unveil_main

    sys.exit(unveil_main(["export", *sys.argv[1:]]))
