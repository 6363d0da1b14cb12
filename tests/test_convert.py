"""State-dict converters: round trips, key sets against the reference implementations, reports of
dropped keys, refusals, and safe checkpoint loading. (Outputs through converted weights are
compared in test_parity_timm.py and test_hieradet.py.)"""

import pickle
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file
from unveil.models.convert import (
    ConversionReport,
    convert_state_dict,
    detect_format,
    official_to_sam2,
    official_to_timm,
    official_to_timm_sam2,
    sam2_to_official,
    timm_sam2_to_official,
    timm_to_official,
    to_official,
    unwrap_state_dict,
)
from unveil.models.hiera import hiera_base_16x224, hiera_tiny_224
from unveil.models.hieradet import hieradet_tiny
from unveil.models.mae import mae_hiera_tiny_224
from unveil.pretrain.checkpoints import load_checkpoint_state

with warnings.catch_warnings():  # hiera-transformer imports timm.models.layers (deprecated)
    warnings.simplefilter("ignore", FutureWarning)
    import hiera as official

HEAD_KEYS = {"norm.weight", "norm.bias", "head.projection.weight", "head.projection.bias"}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def image_sd():
    return hiera_tiny_224().state_dict()


@pytest.fixture(scope="module")
def abs_win_sd():
    return hiera_tiny_224(abs_win_pos_embed=True, global_pos_size=(7, 7)).state_dict()


def meta_timm(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


# ---- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["image", "abs_win", "video"])
def test_official_timm_official_is_identity(which, image_sd, abs_win_sd):
    sd = {"image": image_sd, "abs_win": abs_win_sd}.get(which) or hiera_base_16x224(
        input_size=(8, 224, 224)
    ).state_dict()
    timm_sd, report = official_to_timm(sd)
    assert detect_format(timm_sd) == "timm"
    assert report.renamed == {
        "norm.weight": "head.norm.weight",
        "norm.bias": "head.norm.bias",
        "head.projection.weight": "head.fc.weight",
        "head.projection.bias": "head.fc.bias",
    }
    back, _ = timm_to_official(timm_sd)
    assert same(back, sd)


def test_official_sam2_official_is_identity_on_the_trunk(abs_win_sd):
    sam2_sd, report = official_to_sam2({"model_state": abs_win_sd})
    assert set(report.dropped) == HEAD_KEYS  # the SAM 2 trunk has no final norm or classifier
    assert all(k.startswith("image_encoder.trunk.") for k in sam2_sd)
    back, back_report = sam2_to_official(sam2_sd)
    assert not back_report.dropped
    assert same(back, {k: v for k, v in abs_win_sd.items() if k not in HEAD_KEYS})


def test_official_timm_sam2_official_is_identity(abs_win_sd):
    timm_sd, _ = official_to_timm_sam2(abs_win_sd)
    assert detect_format(timm_sd) == "timm_sam2"
    back, _ = timm_sam2_to_official(timm_sd)
    assert same(back, abs_win_sd)


# ---- key sets against the reference implementations -----------------------------------------------


def test_keys_match_timm_hiera(image_sd):
    assert set(official_to_timm(image_sd)[0]) == set(meta_timm("hiera_tiny_224").state_dict())
    abs_win = hiera_tiny_224(abs_win_pos_embed=True).state_dict()
    ref = meta_timm("hiera_tiny_224", abs_win_pos_embed=True).state_dict()
    converted = official_to_timm(abs_win)[0]
    assert set(converted) == set(ref) and all(converted[k].shape == ref[k].shape for k in ref)


def test_keys_match_timm_hieradet_sam2():
    trunk_sd = hieradet_tiny().state_dict()
    ref = meta_timm("sam2_hiera_tiny", num_classes=0).state_dict()
    converted = official_to_timm_sam2(trunk_sd)[0]
    assert set(converted) == set(ref) - {"head.norm.weight", "head.norm.bias"}
    assert all(converted[k].shape == ref[k].shape for k in converted)


def test_sam2_checkpoint_key_names():
    """Names as they appear in SAM 2's released checkpoints (sam2/modeling/backbones/hieradet.py)."""
    sam2_sd, _ = official_to_sam2(hieradet_tiny().state_dict())
    for key in (
        "image_encoder.trunk.patch_embed.proj.weight",
        "image_encoder.trunk.pos_embed",
        "image_encoder.trunk.pos_embed_window",
        "image_encoder.trunk.blocks.0.attn.qkv.weight",
        "image_encoder.trunk.blocks.1.proj.weight",  # tiny: block 1 opens stage 2
        "image_encoder.trunk.blocks.11.mlp.layers.0.weight",
        "image_encoder.trunk.blocks.11.mlp.layers.1.bias",
    ):
        assert key in sam2_sd, key
    # layers.0 widens (768 -> 3072), layers.1 narrows: a swapped mapping would not load into SAM 2
    assert sam2_sd["image_encoder.trunk.blocks.11.mlp.layers.0.weight"].shape == (3072, 768)
    assert sam2_sd["image_encoder.trunk.blocks.11.mlp.layers.1.weight"].shape == (768, 3072)
    assert sam2_sd["image_encoder.trunk.pos_embed"].shape == (1, 96, 7, 7)
    assert sam2_sd["image_encoder.trunk.pos_embed_window"].shape == (1, 96, 8, 8)


# ---- dropped keys are reported --------------------------------------------------------------------


def test_mae_checkpoint_drops_decoder_with_report():
    mae_sd = official.mae_hiera_tiny_224(pretrained=False).state_dict()  # the official MAE model's keys
    sd, report = to_official({"model_state": mae_sd})
    decoder = {
        k
        for k in mae_sd
        if k.startswith(("decoder_", "mask_token", "multi_scale_fusion_heads.", "encoder_norm."))
    }
    assert len(decoder) > 20 and set(report.dropped) == decoder
    assert "multi_scale_fusion_heads.0.weight" in report.dropped and "mask_token" in report.dropped
    assert "MAE pretraining only" in report.summary()
    result = hiera_tiny_224(q_pool=2).load_state_dict(sd, strict=False)
    assert set(result.missing_keys) == HEAD_KEYS and not result.unexpected_keys

    # timm's filter keeps encoder_norm as the final norm; available on request
    kept, report = official_to_timm(mae_sd, encoder_norm_as_norm=True)
    assert "head.norm.weight" in kept and report.renamed["encoder_norm.weight"] == "head.norm.weight"


def test_unveil_mae_checkpoint_becomes_a_sam2_trunk():
    """The chain the project exists for: an abs-win MAE pretraining checkpoint → SAM 2 trunk."""
    mae_sd = mae_hiera_tiny_224(abs_win_pos_embed=True, global_pos_size=(7, 7)).state_dict()
    sam2_sd, report = official_to_sam2({"model_state": mae_sd})
    assert all(
        k.startswith(("decoder_", "mask_token", "multi_scale_fusion_heads.", "encoder_norm."))
        for k in report.dropped
    )
    assert len(sam2_sd) + len(report.dropped) == len(mae_sd)
    trunk_sd, _ = sam2_to_official(sam2_sd)
    hieradet_tiny().load_state_dict(trunk_sd, strict=True)


def test_sam2_checkpoint_drops_non_trunk_keys_with_report(abs_win_sd):
    trunk, _ = official_to_sam2(abs_win_sd)
    others = {
        "image_encoder.neck.convs.0.conv.weight": torch.zeros(256, 768, 1, 1),
        "sam_mask_decoder.iou_token.weight": torch.zeros(1, 256),
        "memory_attention.layers.0.self_attn.q_proj.weight": torch.zeros(256, 256),
        "maskmem_tpos_enc": torch.zeros(7, 1, 1, 64),
        "no_mem_embed": torch.zeros(1, 1, 256),
    }
    sd, report = sam2_to_official({"model": {**trunk, **others}})
    assert set(report.dropped) == set(others)
    assert hieradet_tiny().load_state_dict(sd, strict=True) is not None
    assert isinstance(report, ConversionReport) and "5 dropped" in report.summary()


def test_pos_embed_abs_alias(abs_win_sd):
    aliased = {("pos_embed_abs" if k == "pos_embed" else k): v for k, v in abs_win_sd.items()}
    sd, report = to_official(aliased)
    assert report.renamed == {"pos_embed_abs": "pos_embed"} and same(sd, abs_win_sd)


def test_keep_head_false_drops_norm_and_head(image_sd):
    sd, report = convert_state_dict(image_sd, "official", keep_head=False)
    assert set(report.dropped) == HEAD_KEYS and not (HEAD_KEYS & set(sd))


# ---- refusals ------------------------------------------------------------------------------------


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unrecognised state-dict format"):
        detect_format({"encoder.layer.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unrecognised state-dict format"):
        to_official({"encoder.layer.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown state-dict format 'onnx'"):
        convert_state_dict({"patch_embed.proj.weight": torch.zeros(1)}, "onnx")


def test_unknown_key_is_refused(image_sd):
    with pytest.raises(ValueError, match="'blocks.0.attn.rel_pos_h'"):
        to_official({**image_sd, "blocks.0.attn.rel_pos_h": torch.zeros(1)})


def test_missing_key_is_named_in_the_source_layout(abs_win_sd):
    sam2_sd, _ = official_to_sam2(abs_win_sd)
    del sam2_sd["image_encoder.trunk.blocks.3.mlp.layers.1.bias"]
    with pytest.raises(ValueError, match=r"'image_encoder\.trunk\.blocks\.3\.mlp\.layers\.1\.bias'"):
        sam2_to_official(sam2_sd)
    no_proj = {k: v for k, v in abs_win_sd.items() if k != "blocks.1.proj.weight"}
    with pytest.raises(ValueError, match="'blocks.1.proj.weight'"):
        official_to_timm(no_proj)


def test_plain_or_video_pos_embed_cannot_become_a_sam2_trunk(image_sd):
    with pytest.raises(ValueError, match="absolute-win"):
        official_to_sam2(image_sd)
    with pytest.raises(ValueError, match="absolute-win"):
        official_to_timm_sam2(hiera_base_16x224(input_size=(8, 224, 224)).state_dict())


def test_timm_layer_scale_is_refused():
    with pytest.raises(ValueError, match=r"ls1\.gamma"):
        timm_to_official(meta_timm("hiera_small_abswin_256").state_dict())


# ---- checkpoint files ----------------------------------------------------------------------------


class NotATensor:
    pass


def test_load_checkpoint_state(tmp_path, image_sd):
    torch.save({"model_state": image_sd}, tmp_path / "official.pth")
    assert same(load_checkpoint_state(tmp_path / "official.pth"), image_sd)

    torch.save(
        {"state_dict": {"model." + k: v for k, v in image_sd.items()}, "epoch": 3}, tmp_path / "last.ckpt"
    )
    lightning = load_checkpoint_state(tmp_path / "last.ckpt")
    sd, report = to_official(lightning, source="official", prefix="model.")
    assert same(sd, image_sd) and not report.dropped

    save_file({k: v.contiguous() for k, v in image_sd.items()}, str(tmp_path / "backbone.safetensors"))
    assert same(load_checkpoint_state(tmp_path / "backbone.safetensors"), image_sd)


def test_load_checkpoint_state_refuses_arbitrary_pickles(tmp_path, image_sd):
    torch.save({"model_state": image_sd, "extra": NotATensor()}, tmp_path / "unsafe.pth")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint_state(tmp_path / "unsafe.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        unwrap_state_dict({"patch_embed.proj.weight": torch.zeros(1), "epoch": 3})


def test_lightning_checkpoint_prefix_is_detected_and_stripped():
    """A MAEPretrainModule checkpoint stores the MAE under 'model.'; the backbone converts from it."""
    mae = mae_hiera_tiny_224(decoder_depth=1)
    lightning = {f"model.{k}": v for k, v in mae.state_dict().items()}
    sd, report = convert_state_dict(lightning, "timm", prefix="model.", keep_head=False)
    assert "patch_embed.proj.weight" in sd and not any(k.startswith("model.") for k in sd)
    assert "model.decoder_pred.weight" in report.dropped and "model.mask_token" in report.dropped
    model = timm.create_model("hiera_tiny_224", pretrained=False, num_classes=0)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)
