"""Every Hiera state-dict converter, in one place.

Formats (names accepted by :func:`convert_state_dict`):

========== ========================================================================================
official   facebookresearch/hiera keys, which are unveil's own (:class:`~unveil.models.hiera.Hiera`
           and :class:`~unveil.models.hieradet.HieraDet`): ``pos_embed``, ``pos_embed_win``,
           ``blocks.{i}.mlp.fc1``, ``norm``, ``head.projection``. Read with the ``model_state``
           wrapper and the ``pos_embed_abs`` alias of some absolute-win checkpoints. MAE
           checkpoints add ``encoder_norm``, ``mask_token``, ``decoder_*`` and
           ``multi_scale_fusion_heads.*``, which have no place in a backbone and are dropped.
timm       timm's ``hiera_*``: ``head.norm`` for ``norm``, ``head.fc`` for ``head.projection``.
sam2       SAM 2 checkpoints: the trunk under ``image_encoder.trunk.``, ``pos_embed_window`` for
           ``pos_embed_win``, ``mlp.layers.0/1`` for ``mlp.fc1/fc2``; no final norm or head. Every
           other SAM 2 key (neck, prompt encoder, mask decoder, memory) is dropped.
timm_sam2  timm's ``hieradet_sam2``: SAM 2 trunk names with ``mlp.fc1/fc2``, plus ``head.norm``
           and ``head.fc``.
========== ========================================================================================

Every conversion goes through the official names and returns ``(state_dict, ConversionReport)``.
The report lists every renamed and every dropped key: nothing is dropped silently. A key that fits
no rule of its format, a missing key the backbone needs, or a tensor the target cannot express
(e.g. a per-token ``pos_embed`` for the SAM 2 trunk, which needs absolute-win embeddings) raises
``ValueError`` naming the key.

Tensors are passed through unchanged (no copies): all four layouts store the same shapes.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

__all__ = [
    "FORMATS",
    "ConversionReport",
    "convert_state_dict",
    "detect_format",
    "from_official",
    "official_to_sam2",
    "official_to_timm",
    "official_to_timm_sam2",
    "sam2_to_official",
    "timm_sam2_to_official",
    "timm_to_official",
    "to_official",
    "unwrap_state_dict",
]

FORMATS = ("official", "timm", "sam2", "timm_sam2")
_ALIASES = {"unveil": "official", "hiera": "official", "hieradet": "official", "timm_hieradet": "timm_sam2"}
SAM2_TRUNK_PREFIX = "image_encoder.trunk."

# ---- the official key set ----------------------------------------------------------------------

_BLOCK_PARAMS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)
_OFFICIAL_KEY = re.compile(
    r"^(patch_embed\.proj\.(weight|bias)"
    r"|pos_embed|pos_embed_win|pos_embed_spatial|pos_embed_temporal"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
    r"|norm\.(weight|bias)|head\.projection\.(weight|bias))$"
)
# MAE pretraining parts: the encoder_norm feeds the decoder; the rest is the decoder itself
_MAE_KEY = re.compile(r"^(encoder_norm\.|mask_token$|decoder_|decoder\.|multi_scale_fusion_heads\.)")
_HEAD_KEY = re.compile(r"^(norm|head\.projection)\.(weight|bias)$")


@dataclass
class ConversionReport:
    """What a conversion did, key by key.

    Attributes:
        source, target: format names.
        renamed: source key → target key, for every key whose name changed.
        dropped: source keys with no counterpart in the target, and why (key → reason).
        notes: anything else the caller should know (e.g. keys the target model will miss).
    """

    source: str
    target: str
    renamed: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.source} -> {self.target}: {len(self.renamed)} renamed, {len(self.dropped)} dropped"]
        by_reason: dict[str, list[str]] = {}
        for key, reason in self.dropped.items():
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in by_reason.items():
            shown = ", ".join(keys[:6]) + (f", ... (+{len(keys) - 6})" if len(keys) > 6 else "")
            lines.append(f"  dropped ({reason}): {shown}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = summary


# ---- per-format key rules ------------------------------------------------------------------------
# Each format has a rule to the official names (returns the new key, or None with a reason to drop,
# or raises) and a rule from them.


def _drop_mae(key: str) -> tuple[str | None, str | None]:
    if _MAE_KEY.match(key):
        return None, "MAE pretraining only (decoder / mask token / encoder_norm)"
    return key, None


def _official_in(key: str) -> tuple[str | None, str | None]:
    if key == "pos_embed_abs":
        return "pos_embed", None
    return _drop_mae(key)


def _timm_in(key: str) -> tuple[str | None, str | None]:
    if re.match(r"^blocks\.\d+\.ls[12]\.", key):
        raise ValueError(
            f"{key!r}: layer scale has no counterpart in official Hiera; cannot convert this timm model"
        )
    if key.startswith("head.pre_logits."):
        raise ValueError(f"{key!r}: timm's MLP pre-logits head has no counterpart in official Hiera")
    key = re.sub(r"^head\.norm\.", "norm.", key)
    key = re.sub(r"^head\.fc\.", "head.projection.", key)
    return _official_in(key)


def _timm_out(key: str) -> tuple[str | None, str | None]:
    key = re.sub(r"^norm\.", "head.norm.", key)
    key = re.sub(r"^head\.projection\.", "head.fc.", key)
    return key, None


def _sam2_in(key: str) -> tuple[str | None, str | None]:
    if key == "pos_embed_window":
        return "pos_embed_win", None
    return re.sub(r"\.mlp\.layers\.([01])\.", lambda m: f".mlp.fc{int(m.group(1)) + 1}.", key), None


def _sam2_out(key: str) -> tuple[str | None, str | None]:
    if _HEAD_KEY.match(key):
        return None, "SAM 2 trunk has no final norm or classifier"
    if key == "pos_embed_win":
        key = "pos_embed_window"
    key = re.sub(r"\.mlp\.fc([12])\.", lambda m: f".mlp.layers.{int(m.group(1)) - 1}.", key)
    return SAM2_TRUNK_PREFIX + key, None


def _timm_sam2_in(key: str) -> tuple[str | None, str | None]:
    if key == "pos_embed_window":
        return "pos_embed_win", None
    return _timm_in(key)


def _timm_sam2_out(key: str) -> tuple[str | None, str | None]:
    if key == "pos_embed_win":
        return "pos_embed_window", None
    return _timm_out(key)


def _identity(key: str) -> tuple[str | None, str | None]:
    return key, None


_TO_OFFICIAL: dict[str, Callable[[str], tuple[str | None, str | None]]] = {
    "official": _official_in,
    "timm": _timm_in,
    "sam2": _sam2_in,
    "timm_sam2": _timm_sam2_in,
}
_FROM_OFFICIAL: dict[str, Callable[[str], tuple[str | None, str | None]]] = {
    "official": _identity,
    "timm": _timm_out,
    "sam2": _sam2_out,
    "timm_sam2": _timm_sam2_out,
}


def _canonical(fmt: str) -> str:
    fmt = _ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(
            f"unknown state-dict format {fmt!r}; expected one of {FORMATS} (or {tuple(_ALIASES)})"
        )
    return fmt


# ---- detection and validation --------------------------------------------------------------------


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Guess the format of a (unwrapped) state dict; ValueError when nothing fits."""
    keys = list(state_dict)
    if any(k.startswith(SAM2_TRUNK_PREFIX) or ".mlp.layers." in k for k in keys):
        return "sam2"
    if "pos_embed_window" in state_dict:
        return "timm_sam2"
    if any(k.startswith(("head.fc.", "head.norm.")) for k in keys):
        return "timm"
    if "patch_embed.proj.weight" in state_dict or any(_OFFICIAL_KEY.match(k) for k in keys):
        return "official"
    shown = ", ".join(keys[:5]) if keys else "(empty)"
    raise ValueError(
        f"unrecognised state-dict format (first keys: {shown}); expected Hiera keys such as "
        "'patch_embed.proj.weight', possibly wrapped in 'model_state' / 'model' / 'state_dict' "
        "or under a prefix"
    )


def _validate_official(sd: Mapping[str, torch.Tensor], name: Callable[[str], str]) -> None:
    """Check that ``sd`` (official names) holds a complete backbone; ``name`` maps a key to the
    caller's naming for the error message."""

    def need(key: str) -> None:
        if key not in sd:
            raise ValueError(f"missing key {name(key)!r}: the Hiera backbone needs it")

    need("patch_embed.proj.weight")
    if "pos_embed_spatial" in sd or "pos_embed_temporal" in sd:
        need("pos_embed_spatial")
        need("pos_embed_temporal")
    else:
        need("pos_embed")
        if "pos_embed_win" in sd and sd["pos_embed"].dim() != 4:
            raise ValueError(
                f"{name('pos_embed')!r} has shape {tuple(sd['pos_embed'].shape)} "
                "but 'pos_embed_win' is present: "
                "an absolute-win background table must be [1, C, h, w]"
            )
    indices = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    if not indices:
        raise ValueError(f"missing key {name('blocks.0.attn.qkv.weight')!r}: no transformer blocks found")
    for i in range(indices[-1] + 1):
        for param in _BLOCK_PARAMS:
            need(f"blocks.{i}.{param}")
        if sd[f"blocks.{i}.norm1.weight"].shape != sd[f"blocks.{i}.norm2.weight"].shape:
            need(f"blocks.{i}.proj.weight")  # a widening block carries the residual projection
            need(f"blocks.{i}.proj.bias")


def _check_target(sd: Mapping[str, torch.Tensor], target: str, name: Callable[[str], str]) -> None:
    if target not in ("sam2", "timm_sam2"):
        return
    if "pos_embed_win" not in sd:
        shape = tuple(sd["pos_embed"].shape) if "pos_embed" in sd else None
        what = f"{name('pos_embed')!r} {shape}" if shape else f"{name('pos_embed_spatial')!r} (video)"
        raise ValueError(
            f"the {target} trunk needs absolute-win position embeddings ('pos_embed' [1, C, h, w] plus "
            f"'pos_embed_win'), but this checkpoint has {what}; train with abs_win_pos_embed=True"
        )
    if sd["patch_embed.proj.weight"].dim() != 4:
        raise ValueError(
            f"{name('patch_embed.proj.weight')!r} is not a 2-D convolution: the {target} trunk is image-only"
        )


# ---- conversions -----------------------------------------------------------------------------------


def _split_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str, report: ConversionReport) -> dict:
    if not prefix:
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            out[key[len(prefix) :]] = value
        else:
            report.dropped[key] = f"outside the prefix {prefix!r}"
    if not out:
        raise ValueError(f"no key starts with the prefix {prefix!r}")
    return out


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    target: str,
    source: str | None = None,
    prefix: str | None = None,
    keep_head: bool = True,
    encoder_norm_as_norm: bool = False,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Convert a Hiera backbone state dict between formats.

    Args:
        state_dict: the weights; a ``model_state`` / ``model`` / ``state_dict`` wrapper is removed.
        target: one of :data:`FORMATS`.
        source: the input format; detected when None.
        prefix: only keys under this prefix belong to the backbone (the others are dropped and
            reported); defaults to ``image_encoder.trunk.`` for a full SAM 2 checkpoint, else none.
        keep_head: keep the final norm and classifier (``norm``, ``head.projection``) when the
            target has them; False drops them (reported), e.g. for a backbone-only export.
        encoder_norm_as_norm: keep an MAE checkpoint's ``encoder_norm`` as the final ``norm``
            (what timm's filter does) instead of dropping it with the decoder.

    Returns:
        (converted state dict, report).
    """
    state_dict = unwrap_state_dict(state_dict)
    target = _canonical(target)
    if source is None:
        # detect on the backbone's own keys when a prefix (e.g. Lightning's "model.") is given
        under = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)} if prefix else {}
        source = detect_format(under or state_dict)
    source = _canonical(source)
    report = ConversionReport(source, target)
    if prefix is None:
        prefix = (
            SAM2_TRUNK_PREFIX
            if source == "sam2" and any(k.startswith(SAM2_TRUNK_PREFIX) for k in state_dict)
            else ""
        )
    if source == "sam2" and not prefix and any(k.startswith("image_encoder.") for k in state_dict):
        raise ValueError("SAM 2 checkpoint without 'image_encoder.trunk.*' keys: pass prefix= explicitly")
    body = _split_prefix(state_dict, prefix, report)

    to_off, from_off = _TO_OFFICIAL[source], _FROM_OFFICIAL[target]
    official: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}  # official key → the caller's key
    for key, value in body.items():
        original = prefix + key
        if encoder_norm_as_norm and key.startswith("encoder_norm."):
            new, reason = "norm." + key[len("encoder_norm.") :], None
        else:
            new, reason = to_off(key)
        if new is None:
            report.dropped[original] = reason
            continue
        if not _OFFICIAL_KEY.match(new):
            raise ValueError(f"unrecognised key {original!r} for format {source!r}")
        if new in official:
            raise ValueError(f"keys {origin[new]!r} and {original!r} both map to {new!r}")
        official[new] = value
        origin[new] = original

    def source_name(key: str) -> str:
        """An official key as the caller's checkpoint would spell it (for error messages)."""
        if key in origin:
            return origin[key]
        spelled = _FROM_OFFICIAL[source](key)[0] or key
        return prefix + spelled.removeprefix(SAM2_TRUNK_PREFIX)

    _validate_official(official, source_name)
    _check_target(official, target, source_name)

    out: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        if not keep_head and _HEAD_KEY.match(key):
            report.dropped[origin[key]] = "keep_head=False"
            continue
        new, reason = from_off(key)
        if new is None:
            report.dropped[origin[key]] = reason
            continue
        out[new] = value
        if new != origin[key]:
            report.renamed[origin[key]] = new
    if target in ("timm", "timm_sam2") and "head.norm.weight" not in out:
        report.notes.append(
            "no final norm in the source: timm's model keeps its initial head.norm (load with strict=False)"
        )
    return out, report


def to_official(state_dict: Mapping[str, torch.Tensor], source: str | None = None, **kwargs):
    """Any format → official (unveil) keys. See :func:`convert_state_dict`."""
    return convert_state_dict(state_dict, "official", source=source, **kwargs)


def from_official(state_dict: Mapping[str, torch.Tensor], target: str, **kwargs):
    """Official (unveil) keys → ``target``. See :func:`convert_state_dict`."""
    return convert_state_dict(state_dict, target, source="official", **kwargs)


def official_to_timm(state_dict, **kwargs):
    """Official → timm ``hiera_*`` (``head.norm``, ``head.fc``)."""
    return convert_state_dict(state_dict, "timm", source="official", **kwargs)


def timm_to_official(state_dict, **kwargs):
    """timm ``hiera_*`` → official."""
    return convert_state_dict(state_dict, "official", source="timm", **kwargs)


def official_to_sam2(state_dict, **kwargs):
    """Official (absolute-win) → SAM 2 checkpoint trunk keys (``image_encoder.trunk.*``)."""
    return convert_state_dict(state_dict, "sam2", source="official", **kwargs)


def sam2_to_official(state_dict, **kwargs):
    """SAM 2 checkpoint (or its trunk) → official keys; non-trunk keys are dropped and reported."""
    return convert_state_dict(state_dict, "official", source="sam2", **kwargs)


def official_to_timm_sam2(state_dict, **kwargs):
    """Official (absolute-win) → timm ``hieradet_sam2``."""
    return convert_state_dict(state_dict, "timm_sam2", source="official", **kwargs)


def timm_sam2_to_official(state_dict, **kwargs):
    """timm ``hieradet_sam2`` → official."""
    return convert_state_dict(state_dict, "official", source="timm_sam2", **kwargs)


# ---- checkpoint files ------------------------------------------------------------------------------

_WRAPPERS = ("model_state", "model", "state_dict")


def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """Remove ``model_state`` (official Hiera), ``model`` (SAM 2) or ``state_dict`` (Lightning)
    wrappers; ValueError if what remains is not a flat mapping of tensors."""
    for _ in range(len(_WRAPPERS) + 1):
        inner = next((obj[w] for w in _WRAPPERS if isinstance(obj.get(w), Mapping)), None)
        if inner is None:
            break
        obj = inner
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ValueError(f"not a state dict: entry {bad!r} is a {type(obj[bad]).__name__}, not a tensor")
    return dict(obj)


# ---- backbone configs ------------------------------------------------------------------------------


def hiera_backbone_config(config: Mapping, num_classes: int = 0) -> dict:
    """Constructor arguments of the :class:`~unveil.models.hiera.Hiera` that is the backbone of a Hiera or
    ``MaskedAutoencoderHiera`` config: the MAE's decoder and masking arguments go, ``num_classes`` is set
    (0: no classifier, only the final norm)."""

    from .hiera import Hiera

    params = inspect.signature(Hiera).parameters
    backbone = {k: v for k, v in config.items() if k in params}
    backbone["num_classes"] = num_classes
    return backbone


# ---- MAViL -----------------------------------------------------------------------------------------

MAVIL_ENCODERS = ("audio", "video")
# Parts of a MAViL model that only pretraining uses: (key prefix, why a backbone export drops it)
_MAVIL_PRETRAINING_PARTS = (
    ("fusion_blocks.", "fusion encoder (pretraining only)"),
    ("fusion_norm.", "fusion encoder (pretraining only)"),
    ("audio_decoder.", "decoders (pretraining only)"),
    ("video_decoder.", "decoders (pretraining only)"),
    ("audio_projection.", "contrastive projection heads (pretraining only)"),
    ("video_projection.", "contrastive projection heads (pretraining only)"),
)


def mavil_export_report(keys, encoders, target: str, prefix: str = "") -> ConversionReport:
    """What exporting the ``encoders`` (``"audio"``, ``"video"``) of a MAViL state dict (``keys``, each under
    ``prefix``) keeps and drops: each kept key loses ``{prefix}{modality}_encoder.``. ValueError for a key
    that belongs to no part of MAViL."""
    report = ConversionReport("mavil", target)
    for key in keys:
        name = key[len(prefix) :] if key.startswith(prefix) else None
        if name is None:
            report.dropped[key] = f"outside the prefix {prefix!r}"
            continue
        encoder = next((m for m in MAVIL_ENCODERS if name.startswith(f"{m}_encoder.")), None)
        if encoder is not None:
            if encoder in encoders:
                report.renamed[key] = name[len(f"{encoder}_encoder.") :]
            else:
                report.dropped[key] = f"{encoder} encoder (not selected)"
            continue
        reason = next((why for part, why in _MAVIL_PRETRAINING_PARTS if name.startswith(part)), None)
        if reason is None:
            raise ValueError(f"unrecognised key {key!r} for a MAViL model")
        report.dropped[key] = reason
    return report
