"""HieraDet, the windowed trunk: parity with timm's ``hieradet_sam2`` (the SAM 2 trunk) through the
converters, identity with mask-unit Hiera at 224, and the absolute-win embedding's alignment with
the windows at any resolution ("Window Attention is Bugged", Bolya et al. 2024).

Figures are printed as ``PARITY<TAB>model<TAB>comparison<TAB>max-abs-diff`` (``pytest -s``);
``benchmarks/parity.py`` collects them.
"""

import pytest
import timm
import torch
import torch.nn.functional as F
from unveil.models.convert import official_to_sam2, official_to_timm_sam2, sam2_to_official
from unveil.models.hiera import Hiera, abs_win_pos_embed
from unveil.models.hieradet import CONFIGS, HieraDet, hieradet_base_plus, hieradet_tiny, window_partition

TOL = 1e-4
FACTORIES = {"tiny": hieradet_tiny, "base_plus": hieradet_base_plus}


def report(model: str, comparison: str, diff: float) -> None:
    print(f"\nPARITY\t{model}\t{comparison}\t{diff:.2e}")


@torch.no_grad()
def randomize_(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Perturb every parameter (LayerNorm gains and all biases included) so that a wrongly mapped
    key cannot hide behind an initial value of 0 or 1."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * std)
    return model.eval()


def max_diffs(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
    assert [t.shape for t in a] == [t.shape for t in b]
    return [(x - y).abs().max().item() for x, y in zip(a, b)]


def timm_sam2(size: str, state_dict: dict) -> torch.nn.Module:
    """timm's trunk with our converted weights (built on meta: no init cost)."""
    with torch.device("meta"):
        ref = timm.create_model(f"sam2_hiera_{size}", pretrained=False, num_classes=0)
    result = ref.load_state_dict(state_dict, strict=False, assign=True)
    # our trunk has no final norm; timm's classifier head (unused here) keeps its meta tensors
    assert not result.unexpected_keys and set(result.missing_keys) == {"head.norm.weight", "head.norm.bias"}
    return ref.eval()


@pytest.mark.parametrize("size", ["tiny", "base_plus"])
def test_matches_timm_hieradet_sam2(size):
    ours = randomize_(FACTORIES[size]())
    converted, conv_report = official_to_timm_sam2(ours.state_dict())
    assert conv_report.renamed["pos_embed_win"] == "pos_embed_window" and not conv_report.dropped
    ref = timm_sam2(size, converted)
    assert [b.window_size for b in ours.blocks] == [b.window_size[0] for b in ref.blocks]

    # 256: the stage-3 map (16x16) is cut into padded 14x14 windows, stage 4 (8x8) padded to 7x7 windows
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        expected = ref.forward_intermediates(x, intermediates_only=True)
        got = ours(x)
    diffs = max_diffs(got, expected)
    report(f"hieradet_{size}", "stage maps vs timm sam2_hiera (256px)", max(diffs))
    assert max(diffs) <= TOL, diffs

    # the comparison can fail: dropping the global blocks changes stage 3 and 4
    wrong = FACTORIES[size](global_att_blocks=()).eval()
    wrong.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert max(max_diffs(wrong(x), expected)[2:]) > 1e-3


def test_sam2_checkpoint_layout_roundtrip():
    """Weights written in the SAM 2 checkpoint layout and read back run the same trunk."""
    ours = randomize_(hieradet_tiny())
    sam2_sd, _ = official_to_sam2(ours.state_dict())
    assert "image_encoder.trunk.blocks.1.mlp.layers.0.weight" in sam2_sd
    back, _ = sam2_to_official({"model": sam2_sd})
    other = hieradet_tiny().eval()
    other.load_state_dict(back, strict=True)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert max(max_diffs(other(x), ours(x))) == 0.0


@pytest.mark.parametrize("size", ["tiny", "small", "base_plus"])
def test_same_weights_as_mask_unit_hiera_at_224(size):
    """One set of weights, two ways to run it: at 224 the windowed trunk equals mask-unit Hiera."""
    cfg = CONFIGS[size]
    hiera = Hiera(
        embed_dim=cfg["embed_dim"],
        num_heads=cfg["num_heads"],
        stages=cfg["stages"],
        abs_win_pos_embed=True,
        global_pos_size=cfg["global_pos_size"],
    )
    randomize_(hiera)
    trunk = HieraDet(**cfg).eval()
    result = trunk.load_state_dict(hiera.state_dict(), strict=False)
    assert not result.missing_keys
    assert set(result.unexpected_keys) == {
        "norm.weight",
        "norm.bias",
        "head.projection.weight",
        "head.projection.bias",
    }
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = hiera.forward_intermediates(x, intermediates_only=True)
        got = trunk(x)
    diffs = max_diffs(got, expected)
    report(f"hieradet_{size}", "stage maps vs mask-unit Hiera abs-win (224px)", max(diffs))
    assert max(diffs) <= TOL, diffs


@pytest.mark.parametrize("size", [(448, 448), (512, 384)])
def test_runs_at_higher_resolution(size):
    trunk = hieradet_tiny().eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        maps = trunk(x)
        last, nhwc = trunk.forward_intermediates(x, indices=2, output_fmt="NHWC")
    expected = [(1, c, size[0] // r, size[1] // r) for c, r in zip((96, 192, 384, 768), (4, 8, 16, 32))]
    assert [tuple(m.shape) for m in maps] == expected
    assert [tuple(m.shape) for m in nhwc] == [
        (1, size[0] // r, size[1] // r, c) for c, r in ((384, 16), (768, 32))
    ]
    assert torch.equal(nhwc[-1], last) and torch.equal(nhwc[-1].permute(0, 3, 1, 2), maps[-1])
    assert trunk.channel_list == [768, 384, 192, 96]


def test_rejects_misaligned_window_embedding():
    with pytest.raises(ValueError, match="window_spec"):
        HieraDet(window_spec=(6, 3, 14, 7))


# --------------------------------------------------------------------------------------------
# Absolute-win position embeddings stay aligned with the windows at any resolution
# --------------------------------------------------------------------------------------------


def window_spread(component: torch.Tensor, window: int) -> float:
    """Largest difference between any window of ``component`` [1, C, H, W] and the first one."""
    windows = window_partition(component.permute(0, 2, 3, 1), window)[0]  # [nW, win, win, C]
    return (windows - windows[:1]).abs().max().item()


@pytest.mark.parametrize("resolution", [224, 448, 1024])
def test_abs_win_window_component_is_identical_in_every_window(resolution):
    torch.manual_seed(0)
    trunk = hieradet_tiny()  # 7x7 background, 8x8 window table
    grid = (resolution // 4, resolution // 4)
    with torch.no_grad():
        background = F.interpolate(trunk.pos_embed, size=grid, mode="bicubic")
        pos = trunk.get_pos_embed(grid).permute(0, 3, 1, 2)  # [1, C, H, W]
        window_part = pos - background
    windows = window_partition(window_part.permute(0, 2, 3, 1), 8)[0]
    assert windows.shape[0] == (grid[0] // 8) ** 2
    # every window carries exactly the learned window table
    assert (windows - trunk.pos_embed_win[0].permute(1, 2, 0)).abs().max().item() <= 1e-6
    assert window_spread(window_part, 8) <= 1e-6


@pytest.mark.parametrize("resolution", [448, 1024])
def test_plain_interpolation_misaligns_with_windows(resolution):
    """The bug the paper names: interpolating one absolute table learned at 224 (56x56 tokens)
    stretches its window-periodic part, so windows no longer share one window component."""
    torch.manual_seed(0)
    background, window = torch.randn(1, 32, 14, 14) * 0.02, torch.randn(1, 32, 8, 8) * 0.02
    learned_at_224 = abs_win_pos_embed(background, window, (56, 56))  # what a plain table would hold
    grid = (resolution // 4, resolution // 4)
    with torch.no_grad():
        plain = F.interpolate(learned_at_224, size=grid, mode="bicubic")
        plain_window_part = plain - F.interpolate(background, size=grid, mode="bicubic")
        abs_win_part = abs_win_pos_embed(background, window, grid) - F.interpolate(
            background, size=grid, mode="bicubic"
        )
    spread_plain, spread_abs_win = window_spread(plain_window_part, 8), window_spread(abs_win_part, 8)
    scale = window.abs().max().item()
    report(
        f"pos embed @{resolution}px",
        "spread across windows, plain interpolation (/ window table max)",
        spread_plain / scale,
    )
    report(
        f"pos embed @{resolution}px",
        "spread across windows, abs-win (/ window table max)",
        spread_abs_win / scale,
    )
    assert spread_abs_win <= 1e-6
    assert spread_plain > 0.5 * scale
    # at 224 both are the same table
    assert (F.interpolate(learned_at_224, size=(56, 56), mode="bicubic") - learned_at_224).abs().max() <= 1e-6
