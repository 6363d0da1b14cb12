"""Start a SAM 2 model's trunk from weights pretrained by unveil.

An abs-win Hiera pretrained by MAE is the SAM 2 image-encoder trunk, weight for weight (see
:mod:`unveil.models.hieradet`). :func:`load_trunk` takes the state dict of an ``unveil export``
(any format: unveil / official Hiera keys, SAM 2 ``image_encoder.trunk.*``, timm) or of a
pretraining ``.ckpt`` (the LightningModule's ``model.`` prefix, the MAE decoder left out) and
reports what it loaded, what the file held that SAM 2 does not use, and what stays new.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..convert import convert_state_dict, unwrap_state_dict
from .model import SAM2, SAM2Config

__all__ = ["TrunkLoadReport", "config_for_trunk", "load_trunk", "official_trunk_state", "trunk_size"]

# (embed dim, blocks) → SAM 2 size
_SIZES = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}


@dataclass
class TrunkLoadReport:
    """What :func:`load_trunk` did.

    Attributes:
        loaded: trunk keys (unveil names) taken from the file.
        unused: keys of the file that SAM 2 has no place for, with the reason.
        new: the model's keys left at initialisation, counted per top-level module.
        missing_in_trunk: trunk keys the file lacked (normally none).
    """

    loaded: list[str] = field(default_factory=list)
    unused: dict[str, str] = field(default_factory=dict)
    new: dict[str, int] = field(default_factory=dict)
    missing_in_trunk: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"trunk: {len(self.loaded)} tensors loaded into image_encoder.trunk"]
        if self.missing_in_trunk:
            lines.append(f"  trunk keys not in the file (left at init): {', '.join(self.missing_in_trunk)}")
        reasons: dict[str, int] = {}
        for reason in self.unused.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"  unused from the file: {n} ({reason})" for reason, n in reasons.items()]
        lines.append("  new (untrained): " + ", ".join(f"{module} ({n})" for module, n in self.new.items()))
        return "\n".join(lines)

    __str__ = summary


def official_trunk_state(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A backbone file's state dict → (the Hiera trunk with unveil / official Hiera keys, unused keys
    with reasons)."""
    state = unwrap_state_dict(state_dict)
    if not any(k.endswith(("pos_embed_win", "pos_embed_window")) for k in state):
        raise ValueError(
            "no absolute-win window embedding (pos_embed_win / pos_embed_window): the SAM 2 trunk needs a Hiera "
            "pretrained with abs_win_pos_embed: true"
        )
    prefix = ""
    if "model.pos_embed_win" in state:  # a pretraining .ckpt: the LightningModule's `model.` attribute
        prefix = "model."
    converted, report = convert_state_dict(state, "official", prefix=prefix or None, keep_head=False)
    return converted, dict(report.dropped)


def trunk_size(trunk_state: Mapping[str, torch.Tensor]) -> str:
    """The SAM 2 size whose trunk has this state's width and depth."""
    width = trunk_state["patch_embed.proj.weight"].shape[0]
    depth = len({k.split(".")[1] for k in trunk_state if k.startswith("blocks.")})
    if (width, depth) not in _SIZES:
        raise ValueError(f"a Hiera of width {width} and {depth} blocks is not a SAM 2 trunk size")
    return _SIZES[(width, depth)]


def config_for_trunk(trunk_state: Mapping[str, torch.Tensor], **kwargs) -> SAM2Config:
    """A SAM 2 config whose trunk fits the state: its size, and the pretraining's position tables
    (SAM 2.1's tiny and small use a 7 x 7 background table; a 224-px MAE may have trained 14 x 14)."""
    return SAM2Config(
        trunk=trunk_size(trunk_state),
        trunk_args=dict(
            global_pos_size=tuple(trunk_state["pos_embed"].shape[2:]),
            mask_unit_size=tuple(trunk_state["pos_embed_win"].shape[2:]),
        ),
        **kwargs,
    )


def load_trunk(model: SAM2, state_dict: Mapping[str, torch.Tensor]) -> TrunkLoadReport:
    """Load an unveil backbone file's state dict into ``model.image_encoder.trunk``.

    Raises:
        ValueError: the file holds no abs-win Hiera, or one of another shape than the trunk.
    """
    trunk_state, unused = official_trunk_state(state_dict)
    trunk = model.image_encoder.trunk
    expected = trunk.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in trunk_state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(f"the file's Hiera does not fit this SAM 2 trunk: {'; '.join(wrong[:4])}")
    extra = [k for k in trunk_state if k not in expected]
    for key in extra:
        unused[key] = "not part of the SAM 2 trunk"
    missing, _ = trunk.load_state_dict({k: v for k, v in trunk_state.items() if k in expected}, strict=False)
    report = TrunkLoadReport(loaded=sorted(k for k in trunk_state if k in expected), unused=unused, missing_in_trunk=list(missing))
    for key in model.state_dict():
        if not key.startswith("image_encoder.trunk."):
            module = key.split(".")[0] if not key.startswith("image_encoder.") else "image_encoder.neck"
            report.new[module] = report.new.get(module, 0) + 1
    return report


def sam2_from_trunk(state_dict: Mapping[str, torch.Tensor], **config) -> tuple[SAM2, TrunkLoadReport]:
    """A SAM 2 model built to fit an unveil backbone's trunk, with the trunk loaded."""
    trunk_state, _ = official_trunk_state(state_dict)
    model = SAM2(config_for_trunk(trunk_state, **config))
    return model, load_trunk(model, state_dict)
