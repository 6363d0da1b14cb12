"""Numerical parity of unveil's Hiera with timm 1.0.31 and the official ``hiera-transformer``
package, fp32, random weights (no downloads), max absolute difference <= 1e-4.

- timm: weights go through :func:`unveil.models.convert.official_to_timm`; logits, the four stage
  maps (``forward_intermediates``) and a masked forward are compared.
- official package: its state dict loads into unveil's Hiera with no key mapping at all.

Figures are printed as ``PARITY<TAB>model<TAB>comparison<TAB>max-abs-diff`` (``pytest -s``);
``benchmarks/parity.py`` collects them.
"""

import warnings

import pytest
import timm
import torch
import unveil.models.hiera as U
from timm.models.hiera import Hiera as TimmHiera
from unveil.models.convert import official_to_timm

with warnings.catch_warnings():  # hiera-transformer imports timm.models.layers (deprecated)
    warnings.simplefilter("ignore", FutureWarning)
    import hiera as official

TOL = 1e-4
VIDEO_FAST = (8, 224, 224)  # half the official 16 frames: same model, half the tokens


def report(model: str, comparison: str, diff: float) -> None:
    print(f"\nPARITY\t{model}\t{comparison}\t{diff:.2e}")


@torch.no_grad()
def randomize_(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Perturb every parameter (LayerNorm gains, biases, the 0.001-scaled head) so that a wrongly
    mapped key cannot hide behind an initial value."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * std)
    return model.eval()


def max_diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max(max_diff(x, y) for x, y in zip(a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def timm_with(build, state_dict: dict) -> torch.nn.Module:
    """A timm model holding our weights, converted (built on meta: no init cost)."""
    with torch.device("meta"):
        model = build()
    model.load_state_dict(official_to_timm(state_dict)[0], strict=True, assign=True)
    return model.eval()


def compare_with_timm(name: str, ours, ref, x: torch.Tensor, fmt: str = "NCHW") -> None:
    """Logits, per-stage maps and a masked forward; asserts and reports each figure."""
    with torch.no_grad():
        tokens, maps = ours.forward_intermediates(x, output_fmt=fmt)
        ref_tokens, ref_maps = ref.forward_intermediates(x, output_fmt=fmt)
        figures = {
            "logits": max_diff(ours.forward_head(tokens), ref.forward_head(ref_tokens)),
            "stage maps": max_diff(maps, ref_maps),
        }
        mask = ours.get_random_mask(x, mask_ratio=0.6)
        masked, masked_maps = ours.forward_intermediates(x, mask=mask, output_fmt="NHWC")
        ref_masked, ref_masked_maps = ref.forward_intermediates(x, mask=mask, output_fmt="NHWC")
        figures["masked tokens"] = max_diff(masked, ref_masked)
        figures["masked stage maps"] = max_diff(masked_maps, ref_masked_maps)
        figures["masked logits"] = max_diff(
            ours(x, mask=mask), ref.forward_head(ref.forward_features(x, mask=mask))
        )
    for what, diff in figures.items():
        report(name, f"{what} vs timm", diff)
    assert all(d <= TOL for d in figures.values()), figures


@pytest.mark.parametrize("size", ["tiny", "small", "base", "base_plus"])
def test_image_matches_timm(size):
    ours = randomize_(getattr(U, f"hiera_{size}_224")())
    ref = timm_with(lambda: timm.create_model(f"hiera_{size}_224", pretrained=False), ours.state_dict())
    compare_with_timm(f"hiera_{size}_224", ours, ref, torch.randn(2, 3, 224, 224))


def test_abs_win_matches_timm():
    """timm's absolute-win Hiera interpolates the background with antialias=True (SAM 2 does not);
    unveil matches either with ``pos_embed_antialias``."""
    ours = randomize_(U.hiera_tiny_224(abs_win_pos_embed=True, pos_embed_antialias=True))
    ref = timm_with(lambda: timm.create_model("hiera_tiny_224", abs_win_pos_embed=True), ours.state_dict())
    x = torch.randn(2, 3, 224, 224)
    compare_with_timm("hiera_tiny_224 abs-win", ours, ref, x)

    # the comparison can fail: SAM 2's interpolation (no antialias) is another function
    sam2_style = U.hiera_tiny_224(abs_win_pos_embed=True).eval()
    sam2_style.load_state_dict(ours.state_dict())
    with torch.no_grad():
        diff = max_diff(sam2_style(x), ref(x))
    report("hiera_tiny_224 abs-win", "logits, antialias off vs timm (expected > 0)", diff)
    assert diff > 1e-3


def timm_video(size: str, input_size) -> TimmHiera:
    cfg = U.hiera_config(size, video=True)
    cfg["input_size"] = input_size
    cfg["img_size"] = cfg.pop("input_size")  # timm's name; timm 1.0.31 registers no video factory
    return TimmHiera(**cfg)


def check_video(input_size):
    ours = randomize_(U.hiera_base_16x224(input_size=input_size))
    ref = timm_with(lambda: timm_video("base", input_size), ours.state_dict())
    name = f"hiera_base_16x224 @{input_size[0]} frames"
    # timm's NCHW path cannot permute 5-D maps: compare channels-last
    compare_with_timm(name, ours, ref, torch.randn(1, 3, *input_size), fmt="NHWC")


def test_video_matches_timm():
    check_video(VIDEO_FAST)


@pytest.mark.slow
def test_video_matches_timm_full_16_frames():
    check_video((16, 224, 224))


# ---- the official package: its keys are ours --------------------------------------------------


def official_model(size: str, video: bool = False):
    if video:
        return official.Hiera(**{**U.hiera_config(size, video=True), "input_size": VIDEO_FAST})
    return getattr(official, f"hiera_{size}_224")(pretrained=False)


@pytest.mark.parametrize("size,video", [("tiny", False), ("base_plus", False), ("base", True)])
def test_official_checkpoint_loads_without_mapping(size, video):
    ref = randomize_(official_model(size, video))
    ref.head.act_func = lambda logits: logits  # the official head applies softmax in eval mode
    ours = (U.hiera_base_16x224(input_size=VIDEO_FAST) if video else getattr(U, f"hiera_{size}_224")()).eval()
    U.load_hiera_state_dict(ours, {"model_state": ref.state_dict()}, strict=True)  # an official file: no key mapping
    shape = (1, 3, *VIDEO_FAST) if video else (1, 3, 224, 224)
    x = torch.randn(*shape)
    name = f"hiera_{size}_{'16x' if video else ''}224" + (" @8 frames" if video else "")
    with torch.no_grad():
        ref_logits, ref_maps = ref(x, return_intermediates=True)  # maps are channels-last
        tokens, maps = ours.forward_intermediates(x, output_fmt="NHWC")
        mask = ours.get_random_mask(x, mask_ratio=0.6)
        figures = {
            "logits": max_diff(ours.forward_head(tokens), ref_logits),
            "stage maps": max_diff(maps, ref_maps),
            "masked tokens": max_diff(ours.forward_features(x, mask=mask), ref(x, mask=mask)),
        }
    for what, diff in figures.items():
        report(name, f"{what} vs official hiera", diff)
    assert all(d <= TOL for d in figures.values()), figures
