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
               (see :mod:`unveil.pretrain.checkpoints`); ``build_backbone(path)`` returns the model
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
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from unveil.launch.cli import UsageError

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


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes become one-line ``UsageError``s (``unveil`` prints them, exit status 2)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see 'unveil export --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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

    path: Path
    description: str
    state: dict
    prefix: str = ""
    architecture: Any = None  # unveil.pretrain.checkpoints.Architecture
    info: dict = field(default_factory=dict)

    @property
    def model_state(self) -> dict:
        """The model's weights with the prefix removed."""
        n = len(self.prefix)
        return {k[n:]: v for k, v in self.state.items() if k.startswith(self.prefix)}


def read_source(path: Path) -> Source:
    """Read CKPT safely and tell what it is; ValueError (one line) for anything that is not a checkpoint of a
    model unveil exports."""
    from unveil.models.convert import unwrap_state_dict
    from unveil.pretrain.checkpoints import (
        ARCHITECTURE_KEY,
        Architecture,
        backbone_from_object,
        is_lightning_checkpoint,
        read_checkpoint,
    )

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
    from unveil.pretrain.checkpoints import (
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


def _check_against(
    source: Source, state: dict, expected: dict, architecture, allow_missing: str | None
) -> None:
    from unveil.pretrain.checkpoints import describe_mismatch

    problem = describe_mismatch(state, expected, allow_missing)
    if problem:
        raise ValueError(
            f"'{source.path}' does not match the architecture from {architecture.origin} "
            f"({architecture.class_name}): {problem}"
        )


# ---------------------------------------------------------------------------------------- writing


def _save_torch(obj, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


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


def _source_info(source: Source, architecture) -> dict:
    info = {"checkpoint": str(source.path), **source.info}
    if architecture is not None:
        info.update(model=architecture.class_path, architecture_from=architecture.origin)
    return info


def export_hiera(source: Source, args, architecture, model) -> list[Path]:
    """A Hiera backbone (from an MAE, a classifier, or another export) in the requested format."""
    from unveil.models.convert import (
        convert_state_dict,
        detect_format,
        hiera_backbone_config,
        official_hiera_spec,
        sam2_trunk_specs,
        timm_hiera_spec,
        to_official,
    )
    from unveil.models.hiera import Hiera
    from unveil.models.mae import MaskedAutoencoderHiera
    from unveil.pretrain.checkpoints import Architecture, build_model, save_backbone

    if args.encoder is not None:
        raise ValueError(f"--encoder applies to MAViL checkpoints; '{source.path}' holds a Hiera")
    state = source.model_state
    try:
        layout = detect_format(state)
    except ValueError as error:
        raise ValueError(f"'{source.path}' is not a Hiera, MAE-Hiera or MAViL checkpoint: {error}") from None
    if model is not None:
        if isinstance(model, MaskedAutoencoderHiera) and layout == "official":
            _check_against(source, state, model.state_dict(), architecture, None)  # decoder included
        else:
            # in official names without MAE or SAM 2 extras, against the Hiera backbone (final norm and
            # head optional)
            official, _ = to_official(state, source=layout)
            backbone = (
                model
                if type(model) is Hiera
                else build_model(
                    Architecture(
                        "unveil.models.hiera.Hiera",
                        hiera_backbone_config(
                            architecture.init_args, architecture.init_args.get("num_classes", 0)
                        ),
                    )
                )
            )
            _check_against(source, official, backbone.state_dict(), architecture, _BACKBONE_ONLY)
    elif args.format in ("unveil", "safetensors"):
        raise ValueError(
            f"'{source.path}' records no architecture and no config.yaml was found beside it: "
            f"--format {args.format} stores the model config, so give --config (the run's config.yaml or its "
            "recipe) or --model (e.g. "
            "hiera_base_224)"
        )

    if args.encoder_norm_as_norm and "encoder_norm.weight" not in state:
        raise ValueError(
            f"--encoder-norm-as-norm: '{source.path}' has no encoder_norm (not an MAE checkpoint)"
        )
    target = _KEY_FORMAT[args.format]
    backbone_state, report = convert_state_dict(
        source.state,
        target,
        source=layout,
        prefix=source.prefix or None,
        # the MAE has no classifier: keeping the "head" keeps only the final norm made from encoder_norm
        keep_head=args.keep_head or args.encoder_norm_as_norm,
        encoder_norm_as_norm=args.encoder_norm_as_norm,
    )
    num_classes = 0
    if "head.projection.weight" in backbone_state or "head.fc.weight" in backbone_state:
        num_classes = (
            backbone_state.get("head.projection.weight", backbone_state.get("head.fc.weight"))
        ).shape[0]
    config = hiera_backbone_config(architecture.init_args, num_classes) if architecture is not None else None

    out = Path(args.out)
    name = repr(str(out))
    if args.format in ("unveil", "safetensors"):
        save_backbone(
            out,
            backbone_state,
            Architecture("unveil.models.hiera.Hiera", config),
            _source_info(source, architecture),
            safetensors=args.format == "safetensors",
        )
        loads = [
            ("unveil", None, f"model = unveil.pretrain.checkpoints.build_backbone({name})  # a unveil Hiera")
        ]
    elif args.format == "hiera":
        if config is not None:
            spec = official_hiera_spec(config)
        elif "pos_embed_win" in backbone_state:
            raise ValueError(
                "the official hiera package has no absolute-win position embeddings (pos_embed_win): "
                "export this backbone with --format unveil, timm or sam2"
            )
        else:
            spec = None
        _save_torch({"model_state": backbone_state}, out)
        loads = [
            (
                "the hiera package",
                spec,
                f"model.load_state_dict(torch.load({name}, weights_only=True)['model_state'], strict=False)"
                + _untrained(backbone_state, ("norm", "head.projection")),
            )
        ]
    elif args.format == "timm":
        _save_torch(backbone_state, out)
        loads = [
            (
                "timm",
                timm_hiera_spec(config) if config is not None else None,
                f"model.load_state_dict(torch.load({name}, weights_only=True), strict=False)"
                + _untrained(backbone_state, ("head.norm", "head.fc")),
            )
        ]
    else:  # sam2
        timm_spec, sam2_spec = sam2_trunk_specs(config) if config is not None else (None, None)
        _save_torch({"model": backbone_state}, out)
        loads = [
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
                    "strict=False)  "
                    "# sets the trunk only"
                ),
            ),
        ]
    _print_report(report, source.prefix)
    print(f"wrote {out} ({args.format}: {_describe(backbone_state)})")
    _print_loading(loads, unknown=architecture is None)
    return [out]


def _untrained(state: dict, heads: Sequence[str]) -> str:
    missing = [h for h in heads if f"{h}.weight" not in state]
    return f"  # {', '.join(h + '.*' for h in missing)} stay untrained" if missing else ""


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


def export_vit(source: Source, args, architecture, model, family: str) -> list[Path]:
    """MAViL's audio and/or video encoder (or one exported encoder) as timm ``VisionTransformer`` weights."""
    from unveil.models.convert import MAVIL_ENCODERS, mavil_export_report, timm_vit_spec
    from unveil.models.mavil import mavil_encoder_to_timm
    from unveil.pretrain.checkpoints import architecture_of, save_backbone

    if args.format in ("hiera", "sam2"):
        raise ValueError(
            f"'{source.path}' holds ViT encoders ({family}), not a Hiera: --format {args.format} does not "
            "apply (use unveil, timm or safetensors)"
        )
    if args.keep_head or args.encoder_norm_as_norm:
        raise ValueError("--keep-head and --encoder-norm-as-norm apply to Hiera checkpoints")
    if model is None:
        raise ValueError(
            f"'{source.path}' records no architecture and no config.yaml was found beside it: "
            "give --config (the run's config.yaml or its recipe) or --model (e.g. mavil_vit_base_patch16)"
        )
    state = source.model_state
    _check_against(source, state, model.state_dict(), architecture, None)
    model.load_state_dict(state, strict=True, assign=True)  # the meta model takes the checkpoint's tensors

    out = Path(args.out)
    if family == "MAViL":
        chosen = MAVIL_ENCODERS if args.encoder in (None, "both") else (args.encoder,)
        _print_report(mavil_export_report(source.state, chosen, args.format, source.prefix), source.prefix)
        targets = [
            (m, out.with_name(f"{out.stem}.{m}{out.suffix}") if len(chosen) > 1 else out) for m in chosen
        ]
    else:
        if args.encoder not in (None, "both"):
            raise ValueError(f"--encoder: '{source.path}' holds a single encoder")
        targets = [(None, out)]
    written, loads = [], []
    for modality, path in targets:
        encoder_state, kwargs = mavil_encoder_to_timm(model, modality)
        encoder = model if modality is None else getattr(model, f"{modality}_encoder")
        what = f"{modality} encoder" if modality else "encoder"
        if args.format == "timm":
            _save_torch(encoder_state, path)
            loads.append(
                (
                    f"timm ({what})",
                    timm_vit_spec(kwargs),
                    f"model.load_state_dict(torch.load({str(path)!r}, weights_only=True))",
                )
            )
        else:
            save_backbone(
                path,
                encoder_state,
                architecture_of(encoder),
                _source_info(source, architecture),
                safetensors=args.format == "safetensors",
            )
            loads.append(
                (
                    f"unveil ({what})",
                    None,
                    f"model = unveil.pretrain.checkpoints.build_backbone({str(path)!r})",
                )
            )
        print(f"wrote {path} ({what}, {args.format}: {_describe(encoder_state)})")
        written.append(path)
    _print_loading(loads)
    return written


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
    architecture, model = resolve_architecture(source, args.config, args.model)
    keys_family = _family_of_keys(source.model_state)
    family = _family_of_model(model) if model is not None else keys_family
    if family is None:
        raise ValueError(f"unveil export does not support {architecture.class_path}")
    if model is not None and family != keys_family:
        raise ValueError(
            f"'{path}' holds a {keys_family} model but the architecture from {architecture.origin} is "
            f"{architecture.class_name}"
        )
    print(f"read {path}: {source.description}")
    if architecture is not None:
        print(f"architecture: {architecture.class_path} from {architecture.origin}")
    if family == "Hiera":
        return export_hiera(source, args, architecture, model)
    return export_vit(source, args, architecture, model, family)


# ---------------------------------------------------------------------------------------- at the end of a run


class ExportBackbone(pl.Callback):
    """Export the trained backbone when a fit ends, and log it to W&B as a model artifact.

    At the end of training the final state is written to a temporary checkpoint (on every rank: the save is
    collective under FSDP), then global rank 0 runs ``unveil export`` on it into the run's log folder
    (``backbone.safetensors`` by default; MAViL: ``backbone.audio.safetensors`` and ``backbone.video...``) and
    removes the temporary file. With a ``WandbLogger``, the written files become one artifact of type ``model``
    (name ``backbone-<run id>``, aliases ``latest`` and ``step-<global step>``), offline runs included.

    Args:
        format: an ``unveil export`` format (``unveil``, ``hiera``, ``timm``, ``sam2``, ``safetensors``).
        out: the file to write; default ``<trainer.log_dir>/backbone.<ext>``.
        log_artifact: log the files to every attached WandbLogger's run.
    """

    def __init__(self, format: str = "safetensors", out: str | None = None, log_artifact: bool = True) -> None:
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
        out = self._out(trainer)
        final = out.with_name(f".{out.stem}-final.ckpt")
        trainer.save_checkpoint(final, weights_only=True)
        if not trainer.is_global_zero:
            return
        try:
            args = build_parser().parse_args([str(final), "--format", self.format, "--out", str(out)])
            self.written = run_export(args)
        finally:
            final.unlink(missing_ok=True)
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
                f"backbone-{run.id}", type="model",
                metadata={"format": self.format, "global_step": trainer.global_step,
                          "files": [path.name for path in self.written]},
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
