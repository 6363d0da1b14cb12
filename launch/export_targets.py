"""The same backbone in other codebases: what ``unveil export`` prints under "load it into ...", the model of
another codebase (timm, the official ``hiera`` package, SAM 2) that an exported backbone loads into, with the
arguments that make it compute the same function. The tests build these models and compare outputs.

Key renaming lives in :mod:`unveil.models.convert`; this module only names models and writes their Python."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ModelSpec", "official_hiera_spec", "sam2_trunk_specs", "timm_hiera_spec", "timm_vit_spec"]


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


def _hiera_size(config: Mapping, sizes: Mapping[str, Mapping]) -> str | None:
    """The name in ``sizes`` whose embed_dim, num_heads and stages ``config`` has."""
    for name, size in sizes.items():
        if all(_same(config.get(k), v) for k, v in size.items() if k in ("embed_dim", "num_heads", "stages")):
            return name
    return None


def _hiera_defaults() -> dict:
    from unveil.models.hiera import Hiera

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
    from unveil.models.hiera import SIZES, hiera_config

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
    from unveil.models.hiera import SIZES, hiera_config

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
    """SAM 2's released trunks (timm's ``sam2_hiera_{tiny,small,base_plus,large}``), from the HieraDet
    factories' table with the window sizes made explicit; ``base`` there is not a SAM 2 release."""
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
