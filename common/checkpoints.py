"""Checkpoint files: reading them safely, the architecture they were trained with, and exported backbones.
Shared by pretrain/, finetune/ and launch/.

models/ holds the math and the key converters, never file I/O; this module holds the files.

Reading never unpickles code: torch files go through ``torch.load(weights_only=True)`` (tensors and plain
containers only), safetensors files through safetensors.

The architecture of a checkpoint is the model's class and constructor arguments, ``{"class_path":
"unveil.models.mae.MaskedAutoencoderHiera", "init_args": {...}}``. The pretraining modules store it under
:data:`ARCHITECTURE_KEY` when Lightning saves a checkpoint (:func:`record_architecture`); for checkpoints
without it, LightningCLI's ``config.yaml`` of the run (written into the log folder, above ``checkpoints/``)
holds the same information (:func:`find_run_config`, :func:`architecture_from_run_config`). A class path is
only ever imported from ``unveil.models``: a checkpoint cannot make us import other code.

An exported backbone (``unveil export --format unveil``) is a torch file that loads with
``weights_only=True``::

    {"format": "unveil-backbone", "format_version": 1,
     "class_path": "unveil.models.hiera.Hiera",      # or unveil.models.mavil.AudioEncoder / VideoEncoder
     "config": {...},                                 # the constructor arguments, JSON types only
     "model_state": {...},                            # the weights (Hiera: official hiera keys)
     "source": {...}}                                 # the checkpoint it came from

``--format safetensors`` writes the same weights as a safetensors file whose metadata holds ``format``,
``format_version``, ``class_path`` and JSON strings of ``config`` and ``source``.
:func:`load_backbone` reads both and :func:`build_backbone` returns the model.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from unveil.models.convert import unwrap_state_dict

__all__ = [
    "ARCHITECTURE_KEY",
    "BACKBONE_FORMAT",
    "Architecture",
    "RefusedPickleError",
    "architecture_from_run_config",
    "architecture_of",
    "build_backbone",
    "build_model",
    "describe_mismatch",
    "find_run_config",
    "is_lightning_checkpoint",
    "load_backbone",
    "load_checkpoint_state",
    "read_checkpoint",
    "record_architecture",
    "save_backbone",
]

ARCHITECTURE_KEY = "unveil_architecture"
"""Top-level key of a Lightning checkpoint that holds ``{"class_path", "init_args"}`` of the trained model."""
BACKBONE_FORMAT = "unveil-backbone"
"""``format`` entry of the files ``unveil export --format unveil|safetensors`` writes."""
BACKBONE_FORMAT_VERSION = 1
MODEL_PACKAGE = "unveil.models"


# ---------------------------------------------------------------------------------------- reading files


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length and the JSON header's '{'."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


class RefusedPickleError(ValueError, pickle.UnpicklingError):
    """A checkpoint that pickles objects other than tensors and plain containers (refused by
    ``weights_only`` loading): a ValueError for messages, and an UnpicklingError as ``torch.load`` raises."""


def read_checkpoint(path: str | Path) -> tuple[Any, dict[str, str] | None]:
    """The object stored in a checkpoint file, and the safetensors metadata (None for torch files).

    Torch files are read with ``torch.load(weights_only=True)``; safetensors files give their flat dict of
    tensors. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (one line, naming the file)
    for a file that is not a checkpoint or that pickles objects other than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: '{path}'")
    if _is_safetensors(path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"'{path}' is not a readable safetensors file: {_first_line(error)}") from None
        return tensors, metadata
    with open(path, "rb") as handle:
        magic = handle.read(4)
    # torch.save writes a zip archive; old torch files and plain pickles start with the pickle protocol byte
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":
        raise ValueError(f"'{path}' is not a torch checkpoint (neither a zip archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except pickle.UnpicklingError as error:
        text = str(error)
        blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        what = (
            f"a pickled '{blocked[1]}'"
            if blocked
            else f"what weights_only loading refuses ({detail[1].strip()})"
            if detail
            else "pickled objects other than tensors and plain containers"
        )
        raise RefusedPickleError(
            f"refusing to load '{path}': it holds {what}, and checkpoints are read with "
            "torch.load(weights_only=True), which never runs pickled code; save the weights without it"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"'{path}' is not a torch checkpoint: {_first_line(error)}") from None


def load_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, read by :func:`read_checkpoint` (safetensors, or
    ``torch.load(weights_only=True)``, never an arbitrary pickle); wrappers are removed with
    :func:`unwrap_state_dict`."""
    obj, metadata = read_checkpoint(path)
    return dict(obj) if metadata is not None else unwrap_state_dict(obj)


def is_lightning_checkpoint(obj: Any) -> bool:
    """A dict as ``Trainer.save_checkpoint`` writes it (``state_dict`` plus the loop counters)."""
    return (
        isinstance(obj, Mapping)
        and isinstance(obj.get("state_dict"), Mapping)
        and ("pytorch-lightning_version" in obj or "global_step" in obj)
    )


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


# ---------------------------------------------------------------------------------------- architectures


@dataclass
class Architecture:
    """A model's class and constructor arguments, and where they were found (for messages).

    ``init_args`` holds JSON types only (tuples become lists), so it can go into a ``weights_only``
    checkpoint, a YAML file or safetensors metadata alike.
    """

    class_path: str
    init_args: dict[str, Any]
    origin: str = ""

    @property
    def class_name(self) -> str:
        return self.class_path.rsplit(".", 1)[-1]

    def as_dict(self) -> dict[str, Any]:
        return {"class_path": self.class_path, "init_args": dict(self.init_args)}


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists; TypeError for anything that is not a JSON type."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    raise TypeError(f"{type(value).__name__} is not a plain value")


def architecture_of(model: nn.Module) -> Architecture | None:
    """The class path and constructor arguments of a model that records them in ``model.config`` (Hiera,
    MaskedAutoencoderHiera, MAViL and its encoders); None when it does not, or when ``config`` does not fit
    the class's constructor (a subclass that did not record its own)."""
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping):
        return None
    cls = type(model)
    try:
        inspect.signature(cls).bind(**config)
        init_args = _plain(config)
    except TypeError:
        return None
    return Architecture(f"{cls.__module__}.{cls.__qualname__}", init_args)


def record_architecture(checkpoint: dict, model: nn.Module) -> None:
    """Store ``model``'s architecture in a Lightning checkpoint dict (call from ``on_save_checkpoint``), so
    that ``unveil export`` can rebuild the model from the checkpoint alone."""
    architecture = architecture_of(model)
    if architecture is not None:
        checkpoint[ARCHITECTURE_KEY] = architecture.as_dict()


def find_run_config(checkpoint_path: str | Path, levels: int = 3) -> Path | None:
    """LightningCLI's ``config.yaml`` of the run that wrote a checkpoint: in the checkpoint's folder or up to
    ``levels`` folders above (``<log_dir>/checkpoints/x.ckpt`` with ``<log_dir>/config.yaml``; W&B runs keep
    checkpoints two folders deeper than the config)."""
    folder = Path(checkpoint_path).resolve().parent
    for candidate in [folder, *folder.parents][: levels + 1]:
        if (candidate / "config.yaml").is_file():
            return candidate / "config.yaml"
    return None


def architecture_from_run_config(path: str | Path) -> Architecture:
    """The model architecture in a LightningCLI config (``config.yaml`` of a run, or a recipe): the
    ``model.init_args.model`` entry (``class_path`` + ``init_args``) of a pretraining module, or ``model``
    itself when it is a class of ``unveil.models``. ValueError naming the file when there is none."""
    import yaml

    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read the run config '{path}': {_first_line(error)}") from None
    module = config.get("model") if isinstance(config, Mapping) else None
    candidates = []
    if isinstance(module, Mapping):
        inner = (
            (module.get("init_args") or {}).get("model")
            if isinstance(module.get("init_args"), Mapping)
            else None
        )
        candidates = [inner, module]
    for entry in candidates:
        if isinstance(entry, Mapping) and str(entry.get("class_path", "")).startswith(MODEL_PACKAGE + "."):
            return Architecture(
                str(entry["class_path"]), _plain(dict(entry.get("init_args") or {})), f"'{path}'"
            )
    raise ValueError(
        f"'{path}' names no model of {MODEL_PACKAGE} (expected model.init_args.model.class_path, as the "
        "pretraining recipes have)"
    )


def resolve_model(name: str):
    """A class or factory of ``unveil.models`` by name (``hiera_base_224``, ``MaskedAutoencoderHiera``) or
    class path (``unveil.models.mae.MaskedAutoencoderHiera``). Nothing outside ``unveil.models`` is imported,
    so a checkpoint or config cannot make us run other code. ValueError for anything else."""
    module_name, _, attribute = name.rpartition(".") if "." in name else (MODEL_PACKAGE, "", name)
    if module_name != MODEL_PACKAGE and not module_name.startswith(MODEL_PACKAGE + "."):
        raise ValueError(f"model class '{name}' is not in {MODEL_PACKAGE}: refusing to import it")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        raise ValueError(f"no model '{name}' in {MODEL_PACKAGE}") from None
    # only what unveil.models defines: not a third-party callable that one of its modules happens to import
    defined_in = getattr(target, "__module__", "") or ""
    if not callable(target) or attribute.startswith("_") or not defined_in.startswith(MODEL_PACKAGE + "."):
        raise ValueError(f"'{name}' is not a model class or factory of {MODEL_PACKAGE}")
    return target


def build_model(architecture: Architecture, device: str = "meta") -> nn.Module:
    """Build the model of an architecture; on the meta device by default (no memory, no initialisation: enough
    to compare key sets and shapes, or to ``load_state_dict(..., assign=True)``).

    Models whose constructor needs real tensors are built on the CPU instead. ValueError, naming the
    architecture's origin, when the arguments do not fit the class.
    """
    target = resolve_model(architecture.class_path)
    where = f" from {architecture.origin}" if architecture.origin else ""
    for place in dict.fromkeys([device, "cpu"]):
        try:
            with torch.device(place):
                model = target(**architecture.init_args)
            break
        except (TypeError, ValueError) as error:
            raise ValueError(f"cannot build {architecture.class_path}{where}: {_first_line(error)}") from None
        except (RuntimeError, NotImplementedError):
            if place == "cpu":
                raise
    if not isinstance(model, nn.Module):
        raise ValueError(f"{architecture.class_path}{where} did not build an nn.Module")
    return model


def describe_mismatch(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], allow_missing: str | None = None
) -> str | None:
    """One line listing the missing, unexpected and wrongly shaped keys of ``state`` against ``expected`` (a
    model's ``state_dict()``), a few of each with a count; None when they match. ``allow_missing``: a regex of
    keys that may be absent (e.g. the final norm of a backbone-only file)."""

    def few(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

    missing = [k for k in expected if k not in state and not (allow_missing and re.match(allow_missing, k))]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(expected[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    parts = [
        f"{name}: {few(items)}"
        for name, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    return "; ".join(parts) if parts else None


# ---------------------------------------------------------------------------------------- exported backbones


def save_backbone(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    architecture: Architecture,
    source: Mapping[str, Any] | None = None,
    safetensors: bool = False,
) -> Path:
    """Write a backbone in unveil's format (see the module docstring): a torch file, or safetensors with the
    architecture as metadata. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = _plain(dict(source or {}))
    if safetensors:
        from safetensors.torch import save_file

        metadata = {
            "format": BACKBONE_FORMAT,
            "format_version": str(BACKBONE_FORMAT_VERSION),
            "class_path": architecture.class_path,
            "config": json.dumps(architecture.init_args),
            "source": json.dumps(source),
        }
        # safetensors refuses views that share storage: give every tensor its own
        save_file(
            {k: v.detach().clone().contiguous() for k, v in state.items()}, str(path), metadata=metadata
        )
    else:
        torch.save(
            {
                "format": BACKBONE_FORMAT,
                "format_version": BACKBONE_FORMAT_VERSION,
                "class_path": architecture.class_path,
                "config": dict(architecture.init_args),
                "model_state": {k: v.detach().contiguous() for k, v in state.items()},
                "source": source,
            },
            path,
        )
    return path


def backbone_from_object(
    obj: Any, metadata: Mapping[str, str] | None, origin: str
) -> tuple[dict, Architecture] | None:
    """``(state, architecture)`` of an unveil backbone file's contents (as :func:`read_checkpoint` returns
    them), or None when they are something else."""
    if metadata is not None:
        if metadata.get("format") != BACKBONE_FORMAT:
            return None
        try:
            init_args = json.loads(metadata["config"])
        except (KeyError, json.JSONDecodeError):
            raise ValueError(f"{origin}: the safetensors metadata has no valid 'config' JSON") from None
        return dict(obj), Architecture(metadata.get("class_path", ""), init_args, origin)
    if not isinstance(obj, Mapping) or obj.get("format") != BACKBONE_FORMAT:
        return None
    if not isinstance(obj.get("config"), Mapping) or not isinstance(obj.get("model_state"), Mapping):
        raise ValueError(f"{origin}: an {BACKBONE_FORMAT} file needs 'config' and 'model_state' entries")
    return unwrap_state_dict(obj["model_state"]), Architecture(
        str(obj.get("class_path", "")), dict(obj["config"]), origin
    )


def load_backbone(path: str | Path) -> tuple[dict[str, torch.Tensor], Architecture]:
    """The weights and architecture of a file written by ``unveil export --format unveil|safetensors``."""
    obj, metadata = read_checkpoint(path)
    found = backbone_from_object(obj, metadata, f"'{path}'")
    if found is None:
        raise ValueError(
            f"'{path}' is not an {BACKBONE_FORMAT} file (write one with unveil export --format unveil)"
        )
    return found


def build_backbone(path: str | Path) -> nn.Module:
    """The model of an exported backbone, weights loaded.

    Parameters that a backbone-only export leaves out (a Hiera's final ``norm`` and classifier ``head``) keep
    their initialisation: train them. Any other difference raises ValueError.
    """
    state, architecture = load_backbone(path)
    model = build_model(architecture, device="cpu")
    problem = describe_mismatch(state, model.state_dict(), allow_missing=r"^(norm|head)\.")
    if problem:
        raise ValueError(f"'{path}' does not match its own architecture {architecture.class_path}: {problem}")
    model.load_state_dict(state, strict=False)
    return model
