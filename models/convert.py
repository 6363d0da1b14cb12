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


# ---- the same backbone in other codebases ----------------------------------------------------------
# What `unveil export` prints (and the tests build): the model of another codebase that an exported
# backbone loads into, and the arguments that make it compute the same function.


@dataclass
class ModelSpec:
    """A model of another codebase, by name and arguments.

    Attributes:
        builder: ``"timm:NAME"`` for ``timm.create_model(NAME)``, else the dotted path of a class or factory
            (``"timm.models.hiera.Hiera"``, ``"hiera.hiera_tiny_224"``).
        kwargs: its arguments; for a named model only those that differ from the name's defaults.
        notes: what a user should know when loading the weights into it.
    """

    builder: str
    kwargs: dict
    notes: list[str] = field(default_factory=list)

    def code(self) -> str:
        """The Python call that builds the model, e.g.
        ``timm.create_model("hiera_tiny_224", num_classes=0)``."""
        args = ", ".join(f"{k}={_literal(v)}" for k, v in self.kwargs.items())
        if self.builder.startswith("timm:"):
            return f'timm.create_model("{self.builder[5:]}"' + (f", {args})" if args else ")")
        return f"{self.builder}({args})"

    def build(self):
        """Build the model (imports its codebase, which must be installed)."""
        import importlib
        import warnings

        if self.builder.startswith("timm:"):
            import timm

            return timm.create_model(self.builder[5:], pretrained=False, **self.kwargs)
        module, _, name = self.builder.rpartition(".")
        with warnings.catch_warnings():  # hiera-transformer imports timm.models.layers (deprecated)
            warnings.simplefilter("ignore", FutureWarning)
            target = getattr(importlib.import_module(module), name)
        return target(**self.kwargs)


def _literal(value) -> str:
    """Python source for an argument value: tuples for sequences, ``functools.partial(...)`` spelled out."""
    import functools

    if isinstance(value, functools.partial):
        module = value.func.__module__
        if module.startswith("torch.nn.modules."):  # torch.nn.LayerNorm, not its defining module
            module = "torch.nn"
        inner = [f"{module}.{value.func.__qualname__}"]
        inner += [_literal(a) for a in value.args] + [f"{k}={_literal(v)}" for k, v in value.keywords.items()]
        return f"functools.partial({', '.join(inner)})"
    if isinstance(value, (list, tuple)):
        items = [_literal(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    return repr(value)


def _same(a, b) -> bool:
    """Equality that does not tell lists from tuples (configs come from YAML, JSON and Python)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# Arguments that change training only (stochastic depth, head dropout and init), not the function.
_TRAINING_ONLY = ("drop_path_rate", "head_dropout", "head_init_scale")


def hiera_backbone_config(config: Mapping, num_classes: int = 0) -> dict:
    """Constructor arguments of the :class:`~unveil.models.hiera.Hiera` that is the backbone of a Hiera or
    ``MaskedAutoencoderHiera`` config: the MAE's decoder and masking arguments go, ``num_classes`` is set
    (0: no classifier, only the final norm)."""
    import inspect

    from .hiera import Hiera

    params = inspect.signature(Hiera).parameters
    backbone = {k: v for k, v in config.items() if k in params}
    backbone["num_classes"] = num_classes
    return backbone


def _hiera_size(config: Mapping, sizes: Mapping[str, Mapping]) -> str | None:
    """The name in ``sizes`` whose embed_dim, num_heads and stages ``config`` has."""
    for name, size in sizes.items():
        if all(_same(config.get(k), v) for k, v in size.items() if k in ("embed_dim", "num_heads", "stages")):
            return name
    return None


def _hiera_defaults() -> dict:
    import inspect

    from .hiera import Hiera

    return {k: p.default for k, p in inspect.signature(Hiera).parameters.items()}


def _q_pool_note(config: Mapping) -> list[str]:
    if config.get("q_pool", 3) == 3:
        return []
    return [
        (
            f"q_pool={config['q_pool']} reproduces the pretraining network (MAE pools twice); the Hiera "
            "paper fine-tunes and SAM 2 runs the same weights with q_pool=3 (the default): drop the argument "
            "for that"
        )
    ]


def timm_hiera_spec(config: Mapping) -> ModelSpec:
    """timm's ``Hiera`` that computes what a unveil Hiera backbone (``config``: Hiera arguments) computes.

    A registered ``hiera_*_224`` name when the size is an official one (images), else the class with every
    argument. timm's ``hiera_*_abswin_*`` models are another architecture (layer scale, no widening
    projection), so absolute-win backbones map onto ``hiera_*_224`` with ``abs_win_pos_embed=True``.
    """
    from .hiera import SIZES, hiera_config

    video = len(config["input_size"]) == 3
    function = {k: v for k, v in config.items() if k not in (*_TRAINING_ONLY, "pos_embed_antialias")}
    size = (
        None
        if video
        else _hiera_size(
            config, {k: dict(zip(("embed_dim", "num_heads", "stages"), v)) for k, v in SIZES.items()}
        )
    )
    if size is not None:
        defaults = {**_hiera_defaults(), **hiera_config(size)}
        function = {k: v for k, v in function.items() if not _same(v, defaults.get(k))}
        builder = f"timm:hiera_{size}_224"
    else:
        builder = "timm.models.hiera.Hiera"
    kwargs = {("img_size" if k == "input_size" else k): _tuples(v) for k, v in function.items()}
    notes = _q_pool_note(config)
    if config.get("abs_win_pos_embed") and not config.get("pos_embed_antialias"):
        notes.append(
            "timm's Hiera resamples the absolute-win background table with antialias=True, this backbone "
            "without (as SAM 2 does), so timm's outputs differ wherever the table is resampled (by about "
            "1e-2, not a rounding error); --format sam2 (timm sam2_hiera_* / hieradet_sam2, SAM 2) resamples "
            "as this backbone does"
        )
    return ModelSpec(builder, kwargs, notes)


def official_hiera_spec(config: Mapping) -> ModelSpec:
    """The official ``hiera`` package's model (hiera-transformer) that computes what a unveil Hiera backbone
    computes; ValueError for absolute-win embeddings, which that package does not have."""
    from .hiera import SIZES, hiera_config

    if config.get("abs_win_pos_embed"):
        raise ValueError(
            "the official hiera package has no absolute-win position embeddings (pos_embed_win): "
            "export this backbone with --format unveil, timm or sam2"
        )
    video = len(config["input_size"]) == 3
    unsupported = ("abs_win_pos_embed", "global_pos_size", "pos_embed_antialias", *_TRAINING_ONLY)
    function = {k: v for k, v in config.items() if k not in unsupported}
    size = _hiera_size(
        config, {k: dict(zip(("embed_dim", "num_heads", "stages"), v)) for k, v in SIZES.items()}
    )
    if size is not None and (
        not video or size not in ("tiny", "small")
    ):  # no official tiny/small video model
        defaults = {**_hiera_defaults(), **hiera_config(size, video=video)}
        kwargs = {
            "pretrained": False,
            **{k: _tuples(v) for k, v in function.items() if not _same(v, defaults.get(k))},
        }
        return ModelSpec(f"hiera.hiera_{size}_{'16x224' if video else '224'}", kwargs, _q_pool_note(config))
    return ModelSpec("hiera.Hiera", {k: _tuples(v) for k, v in function.items()}, _q_pool_note(config))


def _sam2_trunks() -> dict[str, dict]:
    """SAM 2's released trunks (timm's ``sam2_hiera_{tiny,small,base_plus,large}``), from the HieraDet factories'
    table with the window sizes made explicit; ``base`` there is not a SAM 2 release."""
    from unveil.models.hieradet import CONFIGS, HieraDet

    default_windows = inspect.signature(HieraDet).parameters["window_spec"].default
    return {
        size: {"window_spec": tuple(default_windows), **config}
        for size, config in CONFIGS.items()
        if size != "base"
    }


def sam2_trunk_specs(config: Mapping) -> list[ModelSpec]:
    """timm's ``hieradet_sam2`` trunk and SAM 2's ``sam2.modeling.backbones.hieradet.Hiera`` for a unveil
    Hiera backbone with absolute-win embeddings (``config``: Hiera arguments).

    The weights fix the widths, heads, stages, the background table size and the window table size (the
    first stage's window, ``window_spec[0]``); the windows of later stages and the global blocks are choices
    of the resolution the trunk runs at (SAM 2's for its released sizes).
    """
    unit = tuple(config["mask_unit_size"])
    if len(unit) != 2 or unit[0] != unit[1]:
        raise ValueError(f"the SAM 2 trunk needs a square 2-D mask unit for its window table, got {unit}")
    trunks = _sam2_trunks()
    size = _hiera_size(config, trunks)
    base = trunks.get(size, {})
    window_spec = tuple(base.get("window_spec", (8, 4, 14, 7)))
    window_spec = (unit[0], *window_spec[1:])
    global_blocks = tuple(base.get("global_att_blocks", ()))
    notes = []
    if config.get("q_pool", 3) != 3:
        notes.append(
            f"the trunk pools 3 times (q_pool=3, SAM 2's default); pretraining pooled {config['q_pool']} "
            "times (MAE): same weights"
        )
    if size is None:
        notes.append(
            "not a released SAM 2 size: choose window_spec[1:] and global_att_blocks for your resolution "
            f"(window_spec[0] must stay {unit[0]}, the pretraining mask unit)"
        )
    shared = dict(
        embed_dim=config["embed_dim"], num_heads=config["num_heads"], stages=tuple(config["stages"])
    )
    pos = tuple(config["global_pos_size"])
    if size is not None:
        timm_kwargs = {"num_classes": 0}
        if not _same(pos, base["global_pos_size"]):
            timm_kwargs["global_pos_size"] = pos
        if not _same(window_spec, base["window_spec"]):
            timm_kwargs["window_spec"] = window_spec
        timm_spec = ModelSpec(f"timm:sam2_hiera_{size}", timm_kwargs)
    else:
        timm_spec = ModelSpec(
            "timm.models.hieradet_sam2.HieraDet",
            {
                **shared,
                "global_pos_size": pos,
                "window_spec": window_spec,
                "global_att_blocks": global_blocks,
                "num_classes": 0,
            },
        )
    sam2_spec = ModelSpec(
        "sam2.modeling.backbones.hieradet.Hiera",
        {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in shared.items()},
            "window_pos_embed_bkg_spatial_size": list(pos),
            "window_spec": list(window_spec),
            "global_att_blocks": list(global_blocks),
        },
        notes,
    )
    return [timm_spec, sam2_spec]


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


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


def timm_vit_spec(kwargs: Mapping) -> ModelSpec:
    """timm's ``VisionTransformer`` with the arguments :func:`unveil.models.mavil.mavil_encoder_to_timm`
    returns (the video encoder's ``embed_layer`` is unveil's ``TubeletEmbed``, so unveil must be
    installed)."""
    notes = ["num_classes=0: add a head (num_classes=N) for fine-tuning; it starts untrained"]
    if "embed_layer" in kwargs:
        notes.append(
            "video tokens come from unveil.models.vit.TubeletEmbed (a Conv3d over tubelets), "
            "passed as timm's embed_layer"
        )
    return ModelSpec("timm.models.vision_transformer.VisionTransformer", dict(kwargs), notes)
