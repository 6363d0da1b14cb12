"""MAViL: the model (position embeddings, patch order, masking, fusion targets, timm export), the contrastive
pieces, and both training stages on generated audio-video clips (pictures, retrieval, the frozen teacher,
checkpoint errors, the recipes through ``unveil fit``)."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import yaml
from unveil.models.mavil import (
    MAViL,
    create_timm_encoder,
    masked_mse,
    mavil_encoder_to_timm,
    mavil_vit_small_patch16,
    random_keep_mask,
)
from unveil.models.vit import keep_indices, sincos_pos_embed_1d, sincos_pos_embed_2d, sincos_pos_embed_3d
from unveil.pretrain.contrastive import retrieval_recall, scale_gradient, symmetric_info_nce
from unveil.pretrain.mavil import MAViLPretrainModule, MAViLSelfTrainModule, load_mavil_state_dict

REPO = Path(__file__).resolve().parents[1]

# fbank [1, 64, 128] → 4x8 = 32 audio tokens; video [3, 4, 32, 32] → 2x2x2 = 8 tubelets.
TINY = dict(
    audio_size=(64, 128), num_frames=4, image_size=32, patch_size=16, tubelet_frames=2, embed_dim=32, depth=1,
    num_heads=2, fusion_depth=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, projection_dim=16,
    audio_mask_ratio=0.75, video_mask_ratio=0.5,
)
DATA = dict(input_size=32, duration=2.0, video_fps=2.0, num_frames=4, target_length=64, batch_size=4,
            loader={"num_workers": 0, "pin_memory": False})


def tiny(**overrides) -> MAViL:
    return MAViL(**{**TINY, **overrides})


def random_batch(batch_size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"fbank": torch.randn(batch_size, 1, 64, 128, generator=g),
            "video": torch.randn(batch_size, 3, 4, 32, 32, generator=g)}


# ---------------------------------------------------------------------------------------- position embeddings


def test_sincos_1d_closed_form():
    table = sincos_pos_embed_1d(8, torch.arange(5))
    for pos in range(5):
        for i in range(4):
            omega = 10000.0 ** (-i / 4)
            assert table[pos, i].item() == pytest.approx(math.sin(pos * omega), abs=1e-6)
            assert table[pos, 4 + i].item() == pytest.approx(math.cos(pos * omega), abs=1e-6)


def test_sincos_2d_and_3d_split_channels_over_axes():
    h, w, dim = 3, 5, 16
    table = sincos_pos_embed_2d(dim, (h, w)).view(h, w, dim)
    assert torch.allclose(table[:, 0, :8], sincos_pos_embed_1d(8, torch.arange(h)))  # rows: first half
    assert torch.allclose(table[0, :, 8:], sincos_pos_embed_1d(8, torch.arange(w)))  # columns: second half
    assert torch.equal(table[:, :, :8], table[:, :1, :8].expand(-1, w, -1))  # rows' half ignores the column

    t, dim = 4, 32  # 32 channels over 3 axes: 12 (time) + 10 + 10
    table = sincos_pos_embed_3d(dim, (t, h, w)).view(t, h, w, dim)
    assert torch.allclose(table[:, 0, 0, :12], sincos_pos_embed_1d(12, torch.arange(t)))
    assert torch.allclose(table[0, :, 0, 12:22], sincos_pos_embed_1d(10, torch.arange(h)))
    assert torch.allclose(table[0, 0, :, 22:], sincos_pos_embed_1d(10, torch.arange(w)))
    assert sincos_pos_embed_3d(1024, (2, 2, 2)).shape == (8, 1024)  # ViT-L's width splits too
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(15, (2, 2))


# ---------------------------------------------------------------------------------------- model geometry


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_patchify_follows_the_patch_embedding_token_order(modality):
    """Targets and masks index the same patches as the encoder's tokens: the patch conv equals a linear layer
    on ``patchify`` (weights reordered to its layout), token by token."""
    model = tiny()
    batch = random_batch(2)
    if modality == "audio":
        encoder, x = model.audio_encoder, batch["fbank"]
        weight = encoder.patch_embed.proj.weight.permute(0, 2, 3, 1)  # [D, p, p, 1]
    else:
        encoder, x = model.video_encoder, batch["video"]
        weight = encoder.patch_embed.proj.weight.permute(0, 2, 3, 4, 1)  # [D, t, p, p, 3]
    patches = encoder.patchify(x)
    linear = patches @ weight.flatten(1).T + encoder.patch_embed.proj.bias
    assert torch.allclose(encoder.patch_embed(x), linear, atol=1e-5)
    assert torch.equal(encoder.unpatchify(patches), x)


def test_default_geometry_vit_s():
    model = mavil_vit_small_patch16(decoder_depth=1)
    assert (model.num_audio_tokens, model.num_video_tokens) == (512, 784)  # 64x8 and 4x14x14
    assert model.embed_dim == 384 and len(model.audio_encoder.blocks) == 12 and model.num_fusion_layers == 2
    masks = model.sample_masks(1)
    assert int(masks.audio.sum()) == 102 and int(masks.video.sum()) == 78  # floor(512 x 0.2), floor(784 x 0.1)
    with torch.no_grad():
        out = model(torch.randn(1, 1, 1024, 128), torch.randn(1, 3, 8, 224, 224), masks=masks)
    assert out.audio_pred.shape == (1, 512, 256) and out.video_pred.shape == (1, 784, 2 * 16 * 16 * 3)


def test_random_masks_keep_the_ratio_and_views_differ():
    keep = random_keep_mask(6, 40, 0.8)
    assert keep.dtype == torch.bool and keep.sum(1).tolist() == [8] * 6
    masks = tiny().sample_masks(6, second_view=True)
    assert masks.audio.sum(1).tolist() == [8] * 6 and masks.video.sum(1).tolist() == [4] * 6
    assert not torch.equal(masks.audio, masks.audio_view2) and not torch.equal(masks.video, masks.video_view2)
    assert keep_indices(torch.tensor([[False, True, True, False]])).tolist() == [[1, 2]]
    with pytest.raises(ValueError):
        keep_indices(torch.tensor([[True, False], [True, True]]))


def test_encoder_sees_only_visible_patches():
    """Changing the hidden patches leaves the masked encoding unchanged; changing a visible one does not."""
    model = tiny().eval()
    encoder, x = model.audio_encoder, random_batch(1)["fbank"]
    keep = random_keep_mask(1, encoder.num_patches, 0.75)
    hidden_first = int((~keep[0]).nonzero()[0])
    visible_first = int(keep[0].nonzero()[0])
    grid_w = encoder.grid_size[1]

    def poke(index: int) -> torch.Tensor:
        y = x.clone()
        r, c = divmod(index, grid_w)
        y[..., r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] += 5.0
        return encoder.forward_masked(y, keep)

    reference = encoder.forward_masked(x, keep)
    assert reference.shape == (1, 1 + int(keep.sum()), 32)
    assert torch.equal(poke(hidden_first), reference)
    assert not torch.allclose(poke(visible_first), reference)
    assert torch.allclose(encoder.forward_masked(x, torch.ones_like(keep)), encoder.forward_features(x), atol=1e-6)


def test_decoder_puts_tokens_back_in_place():
    """With no decoder blocks a prediction depends only on its own position: visible positions on the encoder
    token put there, hidden ones on the mask token alone."""
    model = tiny(decoder_depth=0).eval()
    decoder = model.audio_decoder
    keep = random_keep_mask(1, model.num_audio_tokens, 0.75)
    tokens = torch.randn(1, 1 + int(keep.sum()), 32)
    pred = decoder(tokens, keep)
    visible = keep_indices(keep)[0]
    expected_visible = decoder.pred(decoder.norm(decoder.embed(tokens[0, 1:]) + decoder.pos_embed[0, 1 + visible]))
    assert torch.allclose(pred[0, visible], expected_visible, atol=1e-6)
    hidden = (~keep[0]).nonzero()[:, 0]
    expected_hidden = decoder.pred(decoder.norm(decoder.mask_token[0] + decoder.pos_embed[0, 1 + hidden]))
    assert torch.allclose(pred[0, hidden], expected_hidden, atol=1e-6)


def test_contextual_targets_average_layers_and_normalise():
    model = tiny(fusion_depth=3).eval()
    batch = random_batch(2)
    outputs = []
    hooks = [block.register_forward_hook(lambda m, i, o: outputs.append(o)) for block in model.fusion_blocks]
    with torch.no_grad():
        audio_t, video_t = model.contextual_targets(batch["fbank"], batch["video"], layers=(0, -1))
    for hook in hooks:
        hook.remove()
    joint = F.layer_norm((outputs[0] + outputs[2]) / 2, (32,))  # [B, 1 + 32 + 1 + 8, D]
    assert torch.allclose(audio_t, joint[:, 1:33], atol=1e-5) and torch.allclose(video_t, joint[:, 34:], atol=1e-5)
    assert audio_t.shape == (2, 32, 32) and video_t.shape == (2, 8, 32)
    assert torch.allclose(audio_t.mean(-1), torch.zeros(2, 32), atol=1e-5)
    with pytest.raises(ValueError):
        model.contextual_targets(batch["fbank"], batch["video"], layers=(3,))


def test_masked_mse_counts_hidden_tokens_only():
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    target[:, :2] = 0  # the visible half is exact, the hidden half off by 1
    keep = torch.tensor([[True, True, False, False]] * 2)
    assert masked_mse(pred, target, keep).item() == pytest.approx(1.0)
    target[1] = 7.0
    weighted = masked_mse(pred, target, keep, sample_weight=torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(1.0)  # sample 1 left out


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_timm_export_gives_the_same_features(modality):
    from timm.models.vision_transformer import VisionTransformer

    model = tiny(depth=2).eval()
    batch = random_batch(2)
    x = batch["fbank"] if modality == "audio" else batch["video"]
    state, kwargs = mavil_encoder_to_timm(model, modality)
    assert set(state) >= {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.mlp.fc2.bias", "norm.weight"}
    vit = VisionTransformer(**kwargs).eval()
    vit.load_state_dict(state, strict=True)
    encoder = model.audio_encoder if modality == "audio" else model.video_encoder
    with torch.no_grad():
        ours, theirs = encoder.forward_features(x), vit.forward_features(x)
        assert torch.allclose(ours, theirs, atol=1e-5)
        pooled = create_timm_encoder(model, modality, num_classes=5).forward_head(theirs, pre_logits=True)
        assert torch.allclose(pooled, ours[:, 1:].mean(1), atol=1e-5)  # "avg" pools the normed patch tokens


# ---------------------------------------------------------------------------------------- contrastive pieces


def test_symmetric_info_nce_closed_form():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    t = 0.2
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / t
    rows = [-(sim[i, i] - torch.logsumexp(sim[i], 0)) for i in range(5)]
    cols = [-(sim[i, i] - torch.logsumexp(sim[:, i], 0)) for i in range(5)]
    expected = (sum(rows) + sum(cols)) / 10
    assert symmetric_info_nce(a, b, t).item() == pytest.approx(expected.item(), rel=1e-5)
    valid = torch.tensor([True, False, True, True, False])
    expected_valid = sum((rows[i] + cols[i]) / 2 for i in (0, 2, 3)) / 3
    assert symmetric_info_nce(a, b, t, valid).item() == pytest.approx(expected_valid.item(), rel=1e-5)


def test_scale_gradient_keeps_the_value():
    x = torch.tensor(3.0, requires_grad=True)
    y = scale_gradient(x * x, 4.0)
    y.backward()
    assert y.item() == pytest.approx(9.0) and x.grad.item() == pytest.approx(24.0)


def test_retrieval_recall_closed_form():
    keys = torch.eye(4)
    assert retrieval_recall(keys, keys, (1, 2)) == {1: 1.0, 2: 1.0}
    query = keys[[1, 0, 2, 3]]  # samples 0 and 1 find each other's key first, 2 and 3 their own
    assert retrieval_recall(query, keys, (1,)) == {1: 0.5}
    query = torch.tensor([[1.0, 0.9, 0, 0], [0.0, 1, 0, 0], [0.0, 0, 1, 0], [0.0, 0, 0.5, 1]])
    keys = torch.tensor([[0.0, 1, 0, 0], [1.0, 0, 0, 0], [0.0, 0, 1, 0], [0.0, 0, 0, 1]])
    assert retrieval_recall(query, keys, (1, 2)) == {1: 0.5, 2: 1.0}


# ---------------------------------------------------------------------------------------- stage 1 losses


def test_stage1_losses_are_the_weighted_sum():
    module = MAViLPretrainModule(tiny(), audio_reconstruction_weight=0.5, video_reconstruction_weight=2.0,
                                 contrastive={"inter_weight": 0.3, "intra_weight": 0.7})
    losses = module.compute_losses(random_batch())
    assert set(losses) == {"loss", "recon_audio", "recon_video", "inter", "intra_audio", "intra_video"}
    expected = (0.5 * losses["recon_audio"] + 2.0 * losses["recon_video"] + 0.3 * losses["inter"]
                + 0.7 * (losses["intra_audio"] + losses["intra_video"]))
    assert torch.allclose(losses["loss"], expected)
    plain = MAViLPretrainModule(tiny(), contrastive={"inter_weight": 0.0, "intra_weight": 0.0})
    plain = plain.compute_losses(random_batch())
    assert set(plain) == {"loss", "recon_audio", "recon_video"}
    with pytest.raises(ValueError, match="target_dim"):
        MAViLPretrainModule(tiny(target_dim=32))


def test_clips_without_audio_are_left_out():
    module = MAViLPretrainModule(tiny(), contrastive={"intra_weight": 0.0})
    batch = random_batch(4)
    masks = module.model.sample_masks(4)
    flagged = {**batch, "audio_missing": torch.tensor([False, False, True, False])}
    flagged["fbank"] = batch["fbank"].clone()
    flagged["fbank"][2] = 100.0  # garbage where the audio is missing
    kept = torch.tensor([0, 1, 3])
    subset = {k: v[kept] for k, v in batch.items()}
    with torch.no_grad():
        full = module.compute_losses(flagged, masks=masks)
        ref = module.compute_losses(subset, masks=masks.select(kept))
    assert full["recon_audio"].item() == pytest.approx(ref["recon_audio"].item(), rel=1e-5)
    assert full["recon_video"].item() != pytest.approx(ref["recon_video"].item(), rel=1e-5)  # video still counts


# ---------------------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def av_root(tmp_path_factory) -> Path:
    from unveil.datasets.synth import make_audio_video_folder

    return make_audio_video_folder(tmp_path_factory.mktemp("av"), num_classes=2, train_per_class=4,
                                   val_per_class=3, duration=2.0, fps=8, size=32, progress=False)


def datamodule(root: Path):
    from unveil.datasets import AudioVideoDataModule

    return AudioVideoDataModule(root=str(root), **DATA)


def fit(module, root: Path, run_dir: Path, steps: int, **trainer_kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, default_root_dir=str(run_dir), enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
        logger=pl.loggers.CSVLogger(str(run_dir), name=""), **trainer_kwargs,
    )
    trainer.fit(module, datamodule=datamodule(root))
    return trainer


@pytest.fixture(scope="module")
def stage1_run(av_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stage1")
    pl.seed_everything(0)
    module = MAViLPretrainModule(tiny(), optimizer={"lr": 1e-3, "warmup_steps": 1}, pictures={"every_n_steps": 2, "num_samples": 2})
    trainer = fit(module, av_root, run_dir, steps=2, val_check_interval=2, check_val_every_n_epoch=None)
    checkpoint = run_dir / "stage1.ckpt"
    trainer.save_checkpoint(checkpoint)
    return module, trainer, checkpoint


def test_stage1_trains_logs_every_term_retrieval_and_pictures(stage1_run):
    module, trainer, _ = stage1_run
    metrics = trainer.logged_metrics
    for term in ("loss", "recon_audio", "recon_video", "inter", "intra_audio", "intra_video", "lr", "samples_per_sec"):
        assert f"train/{term}" in metrics, term
    assert metrics["train/samples_per_sec"].item() > 0  # logged from the second step on
    for key in ("val/loss", "val/recon_audio", "val/inter", "val/a2v_R@1", "val/a2v_R@5", "val/v2a_R@1",
                "val/v2a_R@5"):
        assert key in metrics, key
    assert metrics["val/retrieval_clips"].item() == 6  # 2 classes x 3 held-out clips
    assert 0.0 <= metrics["val/a2v_R@1"].item() <= metrics["val/a2v_R@5"].item() <= 1.0
    pictures = Path(trainer.log_dir) / "reconstructions"
    for name in ("spectrogram", "video"):
        assert (pictures / f"{name}_step_000000.png").is_file()
        assert (pictures / f"{name}_step_000002.png").is_file()
    spectrogram, frames = module.reconstruction_pictures(module._vis_batch["fbank"], module._vis_batch["video"])
    assert spectrogram.shape[0] == 3 and 0.0 <= float(spectrogram.min()) and float(spectrogram.max()) <= 1.0
    assert frames.shape[0] == 3


# ---------------------------------------------------------------------------------------- stage 2


def test_stage2_teacher_is_frozen_unsaved_and_identical_after_a_step(stage1_run, av_root, tmp_path):
    _, _, checkpoint = stage1_run
    module = MAViLSelfTrainModule(tiny(target_dim=32), str(checkpoint), target_layers=(0, 1),
                                  optimizer={"lr": 1e-3, "warmup_steps": 0},
                                  contrastive={"inter_weight": 0.5})
    teacher = module.teacher
    stage1_weights = load_mavil_state_dict(checkpoint)
    assert all(torch.equal(v, stage1_weights[k]) for k, v in teacher.state_dict().items())  # loaded
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = fit(module, av_root, tmp_path, steps=2, limit_val_batches=1)

    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())  # bit-identical
    assert any(not torch.equal(v, student_before[k]) for k, v in module.model.state_dict().items())  # trained
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert not [k for k in module.state_dict() if "teacher" in k]
    saved = tmp_path / "stage2.ckpt"
    trainer.save_checkpoint(saved)
    keys = torch.load(saved, map_location="cpu", weights_only=True)["state_dict"]
    assert keys and all(k.startswith("model.") for k in keys)
    for term in ("loss", "feature_audio", "feature_video", "inter"):
        assert f"train/{term}" in trainer.logged_metrics
    assert "val/a2v_R@1" in trainer.logged_metrics

    module.to(torch.float64)  # the teacher follows the module's dtype and device moves
    assert next(teacher.parameters()).dtype == torch.float64


def test_stage2_targets_come_from_the_teacher_on_unmasked_inputs(stage1_run):
    _, _, checkpoint = stage1_run
    module = MAViLSelfTrainModule(tiny(target_dim=32), str(checkpoint), target_layers=(-1,))
    batch = random_batch(2)
    audio_t, video_t = module.teacher_targets(batch["fbank"], batch["video"])
    with torch.no_grad():
        expected = module.teacher.contextual_targets(batch["fbank"], batch["video"], (1,))
    assert torch.equal(audio_t, expected[0]) and torch.equal(video_t, expected[1])
    masks = module.model.sample_masks(2)
    with torch.no_grad():
        losses = module.compute_losses(batch, masks=masks)
        out = module.model(batch["fbank"], batch["video"], masks=masks)
    assert losses["feature_audio"].item() == pytest.approx(masked_mse(out.audio_pred, audio_t, masks.audio).item())


def test_stage2_rejects_bad_teacher_checkpoints_before_training(stage1_run, tmp_path):
    _, _, checkpoint = stage1_run
    student = tiny(target_dim=32)
    missing = tmp_path / "nowhere.ckpt"
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        MAViLSelfTrainModule(student, str(missing))

    other = tmp_path / "other.ckpt"  # a checkpoint of another model
    torch.save({"state_dict": {"model.backbone.weight": torch.zeros(3)}}, other)
    with pytest.raises(ValueError, match="does not match the teacher architecture"):
        MAViLSelfTrainModule(student, str(other))

    wider = tmp_path / "wider.ckpt"  # a MAViL of another width
    torch.save(tiny(embed_dim=48, target_dim=None).state_dict(), wider)
    with pytest.raises(ValueError, match="shape mismatch"):
        MAViLSelfTrainModule(student, str(wider))

    pickled = tmp_path / "pickled.ckpt"  # arbitrary objects: refused by weights_only
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "extra": Path("x")}, pickled)
    with pytest.raises(ValueError, match="weights_only"):
        MAViLSelfTrainModule(student, str(pickled))

    with pytest.raises(ValueError, match="target_dim=32"):
        MAViLSelfTrainModule(tiny(target_dim=16), str(checkpoint))


# ---------------------------------------------------------------------------------------- recipes and the CLI

MAVIL_RECIPES = ["mavil_stage1_as2m", "mavil_stage2_as2m", "mavil_stage1_vggsound", "mavil_stage2_vggsound",
                 "quickstart_mavil", "quickstart_mavil_stage2"]


def _import(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)


@pytest.mark.parametrize("name", MAVIL_RECIPES)
def test_recipes_name_real_classes_and_arguments(name):
    recipe = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())

    def check(node):
        if isinstance(node, dict) and "class_path" in node:
            cls = _import(node["class_path"])
            init_args = node.get("init_args", {}) or {}
            params = inspect.signature(cls.__init__).parameters
            unknown = [k for k in init_args if k not in params]
            assert not unknown, f"{node['class_path']}: unknown arguments {unknown}"
            for value in init_args.values():
                check(value)
        elif isinstance(node, list):
            for value in node:
                check(value)

    for section in ("model", "data"):
        check(recipe[section])
    model = recipe["model"]["init_args"]["model"]["init_args"]
    data = recipe["data"]["init_args"]
    assert data["input_size"] == model["image_size"]
    assert data.get("num_frames", round(data.get("duration", 4.0) * data.get("video_fps", 2.0))) == model["num_frames"]
    assert data.get("target_length", round(100 * data.get("duration", 4.0))) == model["audio_size"][0]


def test_quickstart_recipes_run_both_stages_through_the_cli(av_root, tmp_path, monkeypatch):
    """``unveil fit`` runs stage 1, then stage 2 finds its teacher through teacher_checkpoint; a wrong
    teacher path stops stage 2 with one line before training."""
    from unveil.launch.cli import main

    monkeypatch.chdir(tmp_path)
    data_root = tmp_path / "data" / "mavil_av"
    data_root.parent.mkdir()
    data_root.symlink_to(av_root)
    tiny_args = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--data.init_args.batch_size=4",
                 "--data.init_args.loader.num_workers=0"]
    assert main(["fit", "--config", "quickstart_mavil", *tiny_args,
                 "--model.init_args.pictures.every_n_steps=0"]) == 0
    teacher = tmp_path / "runs" / "quickstart_mavil" / "stage1" / "checkpoints" / "last.ckpt"
    assert teacher.is_file()
    assert main(["fit", "--config", "quickstart_mavil_stage2", *tiny_args]) == 0
    assert list((tmp_path / "runs" / "quickstart_mavil" / "stage2").rglob("*.ckpt"))

    assert main(["fit", "--config", "quickstart_mavil_stage2", *tiny_args,
                 "--model.init_args.teacher_checkpoint=runs/missing.ckpt"]) == 2
