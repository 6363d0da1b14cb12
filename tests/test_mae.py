"""MAE-Hiera: parity with the official package, masking semantics, targets and pictures."""

import math
import warnings

import pytest
import torch
from unveil.models import Hiera, MaskedAutoencoderHiera, mae_hiera_tiny_224, reroll, unroll

TINY_IMAGE = dict(
    input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), decoder_embed_dim=32,
    decoder_depth=1, decoder_num_heads=2,
)
TINY_VIDEO = dict(
    TINY_IMAGE, input_size=(4, 64, 64), q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8),
    patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), sep_pos_embed=True, mask_ratio=0.9,
)


def official():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import hiera
    return hiera


@pytest.mark.parametrize(
    "name,shape",
    [("mae_hiera_tiny_224", (2, 3, 224, 224)), ("mae_hiera_base_16x224", (1, 3, 16, 224, 224))],
)
def test_matches_official_mae(name, shape):
    """Same weights (official keys, no mapping), same mask: identical loss, predictions and targets."""
    import unveil.models as ours

    ref = getattr(official(), name)(pretrained=False).eval()
    model = getattr(ours, name)().eval()
    model.load_state_dict(ref.state_dict())  # strict: every official key, nothing else
    x = torch.randn(*shape)
    with torch.no_grad():
        mask = ref.get_random_mask(x, model.mask_ratio)
        loss, pred, label, _ = ref(x, mask=mask)
        out = model(x, mask=mask)
    hidden = ~model.patch_mask(mask, model.final_grid(x))
    assert (out.loss - loss).abs().item() <= 1e-5
    assert (out.pred[hidden] - pred).abs().max().item() <= 1e-4
    assert (out.target[hidden] - label).abs().max().item() <= 1e-4


@pytest.mark.parametrize("size,schedule", [((8, 8), [(2, 2)] * 3), ((4, 16, 8), [(1, 2, 2)] * 2), ((12, 6), [])])
def test_unroll_reroll_roundtrip(size, schedule):
    x = torch.randn(2, math.prod(size), 5)
    spatial = x.view(2, *size, 5)
    assert torch.equal(reroll(unroll(x, size, schedule), size, schedule), spatial)


def test_unroll_puts_stride_neighbours_first():
    """After unrolling, max over the leading 2x2 offsets equals 2x2 max pooling in space."""
    size, schedule = (8, 8), [(2, 2)] * 3
    x = torch.randn(1, 64, 3)
    pooled = unroll(x, size, schedule).view(1, 4, 16, 3).amax(dim=1)
    expected = torch.nn.functional.max_pool2d(x.view(1, 8, 8, 3).permute(0, 3, 1, 2), 2)
    got = reroll(pooled, (4, 4), schedule[1:]).permute(0, 3, 1, 2)
    assert torch.equal(got, expected)


def test_random_mask_keeps_exact_count():
    model = MaskedAutoencoderHiera(**TINY_IMAGE, mask_ratio=0.6)
    x = torch.randn(3, 3, 64, 64)
    mask = model.get_random_mask(x, 0.6)
    assert mask.dtype == torch.bool and mask.shape == (3, 4)
    assert mask.sum(1).tolist() == [int(4 * 0.4)] * 3
    video = MaskedAutoencoderHiera(**TINY_VIDEO)
    vmask = video.get_random_mask(torch.randn(2, 3, 4, 64, 64), 0.9)
    assert vmask.shape == (2, 2 * 2 * 2) and vmask.sum(1).tolist() == [0, 0]


def test_masked_pixels_do_not_leak():
    """Changing pixels inside masked units changes nothing the encoder computes."""
    torch.manual_seed(0)
    model = MaskedAutoencoderHiera(**dict(TINY_IMAGE, input_size=(128, 128))).eval()
    x = torch.randn(1, 3, 128, 128)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [0, 5, 10, 15]] = True
    hidden_pixels = ~torch.nn.functional.interpolate(mask.view(1, 1, 4, 4).float(), size=(128, 128)).bool()
    y = torch.where(hidden_pixels, torch.randn_like(x) * 10, x)
    with torch.no_grad():
        a, b = model.forward_encoder(x, mask), model.forward_encoder(y, mask)
    assert a.shape == (1, 4, 2, 2, 128)  # only the 4 visible units are encoded
    assert torch.equal(a, b)


def test_loss_covers_masked_units_only():
    torch.manual_seed(0)
    model = MaskedAutoencoderHiera(**TINY_IMAGE).eval()
    x = torch.randn(2, 3, 64, 64)
    mask = model.get_random_mask(x, 0.5)
    with torch.no_grad():
        out = model(x, mask=mask)
    hidden = ~model.patch_mask(mask, model.final_grid(x))
    expected = (out.pred[hidden] - out.target[hidden]).pow(2).mean()
    assert torch.allclose(out.loss, expected)
    everywhere = (out.pred - out.target).pow(2).mean()
    assert not torch.allclose(out.loss, everywhere)


def test_targets_are_per_patch_normalised_16px():
    model = mae_hiera_tiny_224(decoder_depth=1)
    assert model.pred_stride == 16 and model.tokens_spatial_shape_final == [14, 14]
    x = torch.rand(1, 3, 224, 224)
    target = model.make_target(x)
    assert target.shape == (1, 196, 16 * 16 * 3)
    assert torch.allclose(target.mean(-1), torch.zeros(1, 196), atol=1e-5)
    assert torch.allclose(target.std(-1), torch.ones(1, 196), atol=1e-3)


def test_video_targets_are_time_strided():
    model = MaskedAutoencoderHiera(**TINY_VIDEO)
    x = torch.randn(1, 3, 4, 64, 64)
    patches = model.patchify(x)
    assert patches.shape == (1, 2 * 4 * 4, 16 * 16 * 3)  # frames 0 and 2, 4x4 patches of 16px
    x2 = x.clone()
    x2[:, :, 1::2] = 0  # the frames between strides are not targets
    assert torch.equal(model.patchify(x2), patches)


@pytest.mark.parametrize("config,shape", [(TINY_IMAGE, (2, 3, 64, 64)), (TINY_VIDEO, (2, 3, 4, 64, 64))])
def test_forward_backward_and_pictures(config, shape):
    model = MaskedAutoencoderHiera(**dict(config, mask_ratio=0.5))
    x = torch.randn(*shape)
    out = model(x)
    out.loss.backward()
    assert out.pred.shape == out.target.shape and out.mask.dtype == torch.bool
    assert model.patch_embed.proj.weight.grad is not None and model.decoder_pred.weight.grad is not None
    pics = model.reconstruction_images(x, out)
    assert set(pics) == {"input", "masked", "reconstruction", "target"}
    expected = model.patchify(x).shape
    for v in pics.values():
        assert model.patchify(v if v.dim() == 4 else v.repeat_interleave(2, dim=2)).shape == expected
    visible = model.patch_mask(out.mask, model.final_grid(x)).unsqueeze(-1)
    rec = model.patchify(pics["reconstruction"] if x.dim() == 4 else pics["reconstruction"].repeat_interleave(2, 2))
    assert torch.equal(torch.where(visible, rec, 0), torch.where(visible, model.patchify(x), 0))


def test_reconstruction_unnormalises_with_patch_statistics():
    """A perfect prediction of the normalised target reconstructs the input exactly."""
    model = MaskedAutoencoderHiera(**TINY_IMAGE)
    x = torch.rand(1, 3, 64, 64)
    mask = torch.tensor([[True, False, False, True]])
    perfect = model.make_target(x)
    out = type(model(x, mask=mask))(torch.tensor(0.0), perfect, perfect, mask)
    rec = model.reconstruction_images(x, out)["reconstruction"]
    assert torch.allclose(rec, x, atol=1e-4)


def test_weight_decay_and_layer_groups():
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    model = MaskedAutoencoderHiera(**TINY_IMAGE)
    skip = model.no_weight_decay()
    assert {"pos_embed", "mask_token", "decoder_pos_embed"} <= skip
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=skip)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.pos_embed) in no_decay and id(model.blocks[0].norm1.weight) in no_decay
    assert id(model.blocks[0].attn.qkv.weight) not in no_decay
    layered = param_groups_layer_decay(model, 0.05, no_weight_decay_list=skip, layer_decay=0.75)
    scales = {g["lr_scale"] for g in layered}
    assert len(scales) == len(model.blocks) + 1  # the stem, then every block
    decoder = [g["lr_scale"] for g in layered if any(p is model.decoder_pred.weight for p in g["params"])]
    assert decoder == [1.0]  # the decoder side trains at the last block's rate


def test_classifier_runs_at_other_resolutions_and_video_sizes():
    model = Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), num_classes=7)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    assert model(torch.randn(1, 3, 128, 96)).shape == (1, 7)
    final, maps = model.forward_intermediates(torch.randn(1, 3, 128, 128))
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]
    with pytest.raises(ValueError, match="mask_unit_size"):
        model(torch.randn(1, 3, 80, 80))
