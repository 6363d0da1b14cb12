"""Speed paths (issue 13): attention reaches the fused SDPA kernels, MAE and MAViL forwards are graph-safe (static
shapes, no host sync), the ``compile`` option of the pretraining modules, the fused AdamW, and training logs
without a per-step all-reduce.

Under ``sdpa_kernel([SDPBackend.FLASH_ATTENTION])`` a call that cannot use the flash kernel (a 5-D q/k/v, for
one) raises "No available kernel" instead of falling back to the math path, on the CPU as on a GPU.
"""

from __future__ import annotations

import warnings
from unittest import mock

import lightning.pytorch as pl
import pytest
import torch
import torch._dynamo
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader
from unveil.models import Hiera, MaskedAutoencoderHiera
from unveil.models.hiera import MaskUnitAttention, unit_indices, unit_mask
from unveil.models.hieradet import HieraDet
from unveil.models.mavil import MAViL, MAViLMasks, random_keep_indices, random_keep_mask
from unveil.models.vit import keep_indices, keep_mask
from unveil.pretrain import MAEPretrainModule
from unveil.pretrain.optim import adamw, implementation

TINY_IMAGE = dict(
    input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), decoder_embed_dim=32, decoder_depth=1,
    decoder_num_heads=2,
)
TINY_VIDEO = dict(
    TINY_IMAGE, input_size=(4, 64, 64), q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7),
    patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), sep_pos_embed=True, mask_ratio=0.5,
)
SHAPES = {"image": (2, 3, 64, 64), "video": (2, 3, 4, 64, 64)}
CONFIGS = {"image": TINY_IMAGE, "video": TINY_VIDEO}
TINY_MAVIL = dict(
    audio_size=(64, 128), num_frames=4, image_size=32, patch_size=16, tubelet_frames=2, embed_dim=32, depth=1,
    num_heads=2, fusion_depth=1, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, projection_dim=16,
    audio_mask_ratio=0.75, video_mask_ratio=0.5,
)


def flash_only():
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def mavil_inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 1, 64, 128, generator=g), torch.randn(batch, 3, 4, 32, 32, generator=g)


def graph_breaks(fn, *args, **kwargs) -> int:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args, **kwargs)
    torch._dynamo.reset()
    return explanation.graph_break_count


# ---------------------------------------------------------------------------------------------- fused attention


def test_flash_only_context_rejects_a_5d_call():
    """The check the tests below rely on: under flash only, a 5-D call (the old mask-unit attention) fails."""
    q = torch.randn(1, 2, 3, 16, 8)
    with flash_only(), pytest.raises(RuntimeError, match="No available kernel"):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)


@pytest.mark.parametrize("q_stride,window,mask_unit_attn", [(1, 64, True), (4, 16, True), (4, 16, False), (1, 0, False)])
def test_mask_unit_attention_matches_official(q_stride, window, mask_unit_attn):
    """Windows folded into the batch: the same numbers as the official (5-D) layer, with its weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from hiera.hiera import MaskUnitAttention as OfficialAttention
    torch.manual_seed(0)
    ours = MaskUnitAttention(32, 64, 2, q_stride, window, mask_unit_attn)
    ref = OfficialAttention(32, 64, 2, q_stride, window, mask_unit_attn)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 256, 32)
    with flash_only():
        out = ours(x)
    assert torch.allclose(out, ref(x), atol=1e-6), (out - ref(x)).abs().max()


@pytest.mark.parametrize("kind", ["image", "video"])
def test_mae_and_hiera_forward_backward_run_on_flash(kind):
    """MAE (masked, mask-unit and global attention, the decoder) and the unmasked classifier, forward and
    backward, with only the flash kernel allowed."""
    torch.manual_seed(0)
    mae = MaskedAutoencoderHiera(**CONFIGS[kind])
    x = torch.randn(SHAPES[kind])
    with flash_only():
        mae(x).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mae.parameters() if p.requires_grad)
    config = {k: v for k, v in CONFIGS[kind].items() if not k.startswith("decoder") and k != "mask_ratio"}
    classifier = Hiera(**config, num_classes=5)
    with flash_only():
        classifier(x).sum().backward()
        classifier(x, mask=classifier.get_random_mask(x, 0.5)).sum().backward()


def test_hieradet_forward_backward_run_on_flash():
    """The windowed trunk: windowed (pooled and not) and global blocks."""
    torch.manual_seed(0)
    model = HieraDet(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), window_spec=(8, 4, 4, 2),
                     global_att_blocks=(3,), global_pos_size=(7, 7))
    with flash_only():
        maps = model(torch.randn(1, 3, 64, 64))
        sum(m.sum() for m in maps).backward()
    assert model.patch_embed.proj.weight.grad is not None


def test_mavil_forward_backward_run_on_flash():
    torch.manual_seed(0)
    model = MAViL(**TINY_MAVIL)
    audio, video = mavil_inputs()
    with flash_only():
        out = model(audio, video, second_view=True)
        (out.audio_pred.sum() + out.video_pred.sum() + out.audio_embedding_view2.sum()).backward()
        model.contextual_targets(audio, video)


# ---------------------------------------------------------------------------------------------- graph-safe masking


@pytest.mark.parametrize("kind", ["image", "video"])
def test_mae_index_masks_give_the_bool_mask_results(kind):
    """Indices and bool masks are one mask; the random indices are get_random_mask's draw; the loss (a weighted
    sum) equals the mean over the hidden patches taken by boolean indexing."""
    torch.manual_seed(0)
    model = MaskedAutoencoderHiera(**CONFIGS[kind])
    x = torch.randn(SHAPES[kind])
    torch.manual_seed(1)
    mask = model.get_random_mask(x, 0.5)
    torch.manual_seed(1)
    indices = model.get_random_unit_indices(x, 0.5)
    assert torch.equal(unit_indices(mask), indices) and torch.equal(unit_mask(indices, mask.shape[1]), mask)
    with torch.no_grad():
        by_bool, by_index = model(x, mask=mask), model(x, mask=indices)
    assert torch.equal(by_bool.pred, by_index.pred) and torch.equal(by_bool.mask, by_index.mask)
    hidden = ~model.patch_mask(mask, model.final_grid(x))
    reference = (by_bool.pred[hidden] - by_bool.target[hidden]).pow(2).mean()
    assert torch.allclose(by_index.loss, reference, rtol=1e-6), (by_index.loss, reference)


def test_mavil_index_masks_give_the_bool_mask_results():
    torch.manual_seed(0)
    model = MAViL(**TINY_MAVIL)
    audio, video = mavil_inputs()
    torch.manual_seed(3)
    bools = model.sample_masks(2, second_view=True)
    torch.manual_seed(3)
    indices = model.sample_masks(2, second_view=True, as_indices=True)
    assert all(torch.equal(keep_indices(b), i) for b, i in zip(bools, indices))
    torch.manual_seed(4)
    drawn_as_mask = random_keep_mask(2, 32, 0.75)
    torch.manual_seed(4)
    assert torch.equal(drawn_as_mask, keep_mask(random_keep_indices(2, 32, 0.75), 32))
    with torch.no_grad():
        a, b = model(audio, video, masks=bools), model(audio, video, masks=indices)
    assert torch.equal(a.audio_pred, b.audio_pred) and torch.equal(a.video_embedding_view2, b.video_embedding_view2)
    assert all(torch.equal(m, n) for m, n in zip(a.masks, b.masks)) and b.masks.audio.dtype == torch.bool


@pytest.mark.parametrize("kind", ["image", "video"])
def test_mae_forward_has_no_graph_breaks(kind):
    """With kept-unit indices, or drawing its own, the MAE forward (loss and targets included) is one graph."""
    torch.manual_seed(0)
    model = MaskedAutoencoderHiera(**CONFIGS[kind])
    x = torch.randn(SHAPES[kind])
    assert graph_breaks(model, x, mask=model.get_random_unit_indices(x, 0.5)) == 0
    if kind == "image":  # drawing the mask inside the forward adds torch.rand, argsort, sort and a scatter
        assert graph_breaks(model, x) == 0


def test_mavil_forward_has_no_graph_breaks():
    torch.manual_seed(0)
    model = MAViL(**TINY_MAVIL)
    audio, video = mavil_inputs()
    masks = model.sample_masks(2, second_view=True, as_indices=True)
    assert graph_breaks(model, audio, video, masks=masks, second_view=True) == 0
    assert graph_breaks(model, audio, video, second_view=True) == 0


# ---------------------------------------------------------------------------------------------- compile option


def test_compile_option_keeps_weights_names_and_skips_partial_batches():
    plain = MAEPretrainModule(MaskedAutoencoderHiera(**TINY_IMAGE))
    module = MAEPretrainModule(MaskedAutoencoderHiera(**TINY_IMAGE), compile=True)
    assert plain.train_model is plain.model and not plain.skips_batch(3)
    module.configure_model()
    compiled = module.train_model
    assert compiled is not module.model and compiled._orig_mod is module.model
    assert list(module.state_dict()) == list(plain.state_dict())  # no '_orig_mod.' copy
    assert not module.skips_batch(8) and not module.skips_batch(8)
    with pytest.warns(UserWarning, match="skipping a training batch of 5"):
        assert module.skips_batch(5)


def _tiny_fit_steps(module: pl.LightningModule, loader: DataLoader, tmp_path, steps: int = 2) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=tmp_path, max_steps=steps, max_epochs=-1)
    trainer.fit(module, loader)
    return trainer


@pytest.mark.slow
def test_compiled_mae_training_matches_eager(tmp_path):
    """Training steps of a tiny MAE, compiled (inductor) and eager, from the same weights: the same losses to
    float tolerance (weights are not compared: Adam's first updates are about lr * sign(grad), so float noise
    in a near-zero gradient moves a weight by up to 2 lr); a partial last batch is skipped, not recompiled."""
    images = torch.randn(5, 3, 64, 64)
    loader = DataLoader([{"image": im} for im in images], batch_size=2)  # batches of 2, 2, 1
    losses = []
    for compile in (False, True):
        pl.seed_everything(0)
        module = MAEPretrainModule(MaskedAutoencoderHiera(**TINY_IMAGE), compile=compile,
                                   optimizer={"lr": 1e-3, "warmup_steps": 0},
                                   pictures={"every_n_steps": 0})
        with mock.patch.object(MAEPretrainModule, "log", autospec=True, side_effect=pl.LightningModule.log) as log:
            _tiny_fit_steps(module, loader, tmp_path, steps=3)
        losses.append(torch.stack([c.args[2].detach() for c in log.call_args_list if c.args[1] == "train/loss"]))
        if compile:
            assert module._skipped_batches == 1
    # eager: batches of 2, 2, 1; compiled: 2, 2 and the batch of 1 skipped
    assert len(losses[0]) == 3 and len(losses[1]) >= 2
    assert torch.allclose(losses[0][:2], losses[1][:2], rtol=1e-4), losses


# ---------------------------------------------------------------------------------------------- optimiser, logging


def test_fused_adamw_matches_the_plain_one():
    def train(make) -> tuple[torch.optim.Optimizer, torch.Tensor]:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
        groups = [{"params": [p for p in net.parameters() if p.ndim > 1], "weight_decay": 0.05},
                  {"params": [p for p in net.parameters() if p.ndim <= 1], "weight_decay": 0.0}]
        optimizer = make(groups)
        for _ in range(20):
            loss = net(torch.randn(32, 8)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return optimizer, torch.cat([p.detach().flatten() for p in net.parameters()])

    chosen, fast = train(lambda groups: adamw(groups, lr=1e-2, betas=(0.9, 0.95)))
    _, plain = train(lambda groups: torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), foreach=False))
    assert implementation(chosen) == "fused"  # torch has a fused CPU AdamW
    assert torch.allclose(fast, plain, atol=1e-6), (fast - plain).abs().max()


def test_training_step_logs_without_a_per_step_all_reduce(tmp_path):
    """Per-step training scalars are rank-local; the one cross-rank mean is an epoch aggregate."""
    module = MAEPretrainModule(MaskedAutoencoderHiera(**TINY_IMAGE),
                               optimizer={"lr": 1e-3, "warmup_steps": 0},
                               pictures={"every_n_steps": 0})
    loader = DataLoader([{"image": im} for im in torch.randn(4, 3, 64, 64)], batch_size=2)
    with mock.patch.object(MAEPretrainModule, "log", autospec=True, side_effect=pl.LightningModule.log) as log:
        _tiny_fit_steps(module, loader, tmp_path)
    calls = [(c.args[1], c.kwargs) for c in log.call_args_list if c.args[1].startswith("train/")]
    assert calls
    for name, kwargs in calls:
        if kwargs.get("sync_dist"):
            assert kwargs.get("on_step") is False and kwargs.get("on_epoch") is True, name
    assert any(kwargs.get("sync_dist") for _, kwargs in calls)  # the epoch mean is reduced across ranks
