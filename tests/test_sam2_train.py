"""SAM 2 fine-tuning: the prompt simulation's probabilities and shapes, the training forward, the optimiser
groups, the augmentation and the DataModule, the three ways to start, and the CLI chain
``unveil synth vos`` → ``unveil fit --config quickstart_sam2`` (from random weights and from a trunk export)."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from unveil.finetune.prompts import PromptConfig, mask_to_box, plan_prompts, sample_box, sample_clicks

UNVEIL = str(Path(sys.executable).parent / "unveil")


def _binomial_ok(hits: int, trials: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(hits - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p))


# ------------------------------------------------------------------------------------------------- the plan


def test_plan_probabilities_match_the_official_recipe():
    generator = torch.Generator().manual_seed(0)
    plans = [plan_prompts(8, PromptConfig(), generator) for _ in range(4000)]
    points = [p for p in plans if p.use_points]
    masks = [p for p in plans if not p.use_points]
    assert _binomial_ok(len(points), len(plans), 0.5)  # mask with probability 0.5
    init_counts = Counter(len(p.init_cond_frames) for p in plans)
    assert set(init_counts) == {1, 2} and _binomial_ok(
        init_counts[1], len(plans), 0.5
    )  # 1-2 conditioning frames
    box = sum(len(p.box_frames) for p in points)
    prompted = sum(len(p.init_cond_frames) for p in points)
    assert _binomial_ok(box, prompted, 0.5)  # a box or a click, per conditioning frame
    for plan in plans:
        assert plan.init_cond_frames[0] == 0 and len(set(plan.init_cond_frames)) == len(plan.init_cond_frames)
        assert (
            sorted(plan.order) == list(range(8))
            and plan.order[: len(plan.init_cond_frames)] == plan.init_cond_frames
        )
        assert set(plan.box_frames) <= set(plan.init_cond_frames)
    assert all(p.frames_to_correct == [] and p.box_frames == [] for p in masks)  # no clicks with mask prompts
    # frames to correct: the conditioning frames plus a random number up to 2 in all
    one = [p for p in points if len(p.init_cond_frames) == 1]
    two = [p for p in points if len(p.init_cond_frames) == 2]
    assert all(p.frames_to_correct == p.init_cond_frames for p in two)
    assert all(p.frames_to_correct[:1] == [0] and len(p.frames_to_correct) in (1, 2) for p in one)
    assert _binomial_ok(sum(len(p.frames_to_correct) == 2 for p in one), len(one), 0.5)
    # the extra conditioning and corrected frames are spread over the clip
    extra = Counter(t for p in plans for t in p.init_cond_frames[1:])
    assert set(extra) == set(range(1, 8)) and max(extra.values()) < 2 * min(extra.values())


def test_an_image_always_takes_points_and_is_corrected():
    generator = torch.Generator().manual_seed(1)
    plans = [plan_prompts(1, PromptConfig(), generator) for _ in range(400)]
    assert all(p.use_points and p.init_cond_frames == [0] and p.frames_to_correct == [0] for p in plans)
    assert _binomial_ok(sum(p.box_frames == [0] for p in plans), 400, 0.5)


def test_plan_is_reproducible_from_the_generator():
    a = [plan_prompts(8, generator=torch.Generator().manual_seed(7)) for _ in range(3)]
    b = [plan_prompts(8, generator=torch.Generator().manual_seed(7)) for _ in range(3)]
    assert a == b
    g = torch.Generator().manual_seed(7)
    assert [plan_prompts(8, generator=g) for _ in range(20)] != [
        plan_prompts(8, generator=g) for _ in range(20)
    ]


def test_bad_prompt_config_names_the_field():
    with pytest.raises(ValueError, match="prob_box"):
        PromptConfig(prob_box=1.5)
    with pytest.raises(ValueError, match="num_frames_to_correct"):
        PromptConfig(num_init_cond_frames=3, num_frames_to_correct=2)


# ------------------------------------------------------------------------------------------ clicks and boxes


def _square(n: int, size: int, y0: int, x0: int, side: int) -> torch.Tensor:
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    mask[:, y0 : y0 + side, x0 : x0 + side] = True
    return mask


def test_correction_clicks_are_uniform_over_the_error_region():
    truth = _square(1, 32, 4, 4, 12)  # 144 pixels
    pred = _square(1, 32, 8, 8, 12)  # overlaps 8x8: FN = FP = 80 pixels
    pred[:, 28:, 28:] = True  # 16 more false positives: FP 96
    generator = torch.Generator().manual_seed(0)
    draws = 6000
    coords, labels = sample_clicks(truth.expand(draws, -1, -1), pred.expand(draws, -1, -1), generator)
    assert coords.shape == (draws, 1, 2) and labels.shape == (draws, 1) and labels.dtype == torch.int32
    x, y = coords[:, 0, 0].long(), coords[:, 0, 1].long()
    in_truth, in_pred = truth[0, y, x], pred[0, y, x]
    assert bool((in_truth ^ in_pred).all())  # only on errors
    assert torch.equal(
        labels[:, 0].bool(), in_truth & ~in_pred
    )  # positive on a miss, negative on a false positive
    assert _binomial_ok(int(labels.sum()), draws, 80 / 176)
    # uniform: every error pixel is hit about equally often
    counts = torch.zeros(32 * 32).index_add_(0, y * 32 + x, torch.ones(draws))
    errors = (truth[0] ^ pred[0]).flatten()
    hit = counts[errors]
    expected = draws / errors.sum()
    chi2 = float(((hit - expected) ** 2 / expected).sum())
    assert (hit > 0).all() and chi2 < 176 + 6 * math.sqrt(2 * 176)


def test_clicks_without_prediction_fall_in_the_object_and_exact_ones_on_the_background():
    truth = _square(500, 16, 2, 3, 5)
    generator = torch.Generator().manual_seed(3)
    coords, labels = sample_clicks(truth, None, generator)
    x, y = coords[:, 0, 0].long(), coords[:, 0, 1].long()
    assert bool(truth[0, y, x].all()) and bool((labels == 1).all())
    assert len(set(zip(x.tolist(), y.tolist()))) > 20
    coords, labels = sample_clicks(truth, truth.clone(), generator)
    x, y = coords[:, 0, 0].long(), coords[:, 0, 1].long()
    assert not bool(truth[0, y, x].any()) and bool((labels == 0).all())


def test_boxes_are_jittered_within_a_tenth_of_the_side_and_20_pixels():
    small = _square(1, 256, 100, 50, 40)  # side 40: jitter up to 4 px
    large = _square(1, 256, 10, 10, 240)  # side 240: up to 20 px, not 24
    for mask, reach in ((small, 4.0), (large, 20.0)):
        exact = mask_to_box(mask)[0]
        generator = torch.Generator().manual_seed(0)
        boxes, labels = sample_box(mask.expand(2000, -1, -1), generator=generator)
        assert boxes.shape == (2000, 2, 2) and labels.tolist()[0] == [2, 3]
        moved = (boxes.view(-1, 4) - exact).abs()
        inside = (boxes >= 0).all() and (boxes <= 255).all()
        assert inside and moved.max() <= reach + 1e-4 and moved.max() > 0.9 * reach
    box, _ = sample_box(small, noise=0.0)
    assert box.view(4).tolist() == [50.0, 100.0, 89.0, 139.0]


# ------------------------------------------------------------------------------------------ training forward


def _tiny_model(image_size: int = 64):
    from unveil.models.sam2 import SAM2, SAM2Config

    torch.manual_seed(0)
    return SAM2(SAM2Config(trunk="tiny", image_size=image_size, trunk_args={"window_spec": (8, 4, 8, 4)}))


def _clip(frames: int = 3, objects: int = 2, size: int = 64, clips: int = 1):
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(clips, frames, 3, size, size, generator=generator)
    masks = torch.zeros(frames, objects * clips, size, size, dtype=torch.bool)
    for o in range(objects * clips):
        masks[:, o, 5 + 10 * o : 20 + 10 * o, 8:30] = True
    if frames > 1:
        masks[1, 0] = False  # the first object leaves in frame 1
    return video, masks, torch.arange(clips).repeat_interleave(objects)


def test_forward_clip_steps_and_shapes_follow_the_plan():
    from unveil.finetune.prompts import PromptPlan
    from unveil.finetune.sam2_train import forward_clip

    model = _tiny_model().train()
    video, masks, clip = _clip()
    seen_mask_inputs = []
    original = model.forward_heads

    def recording(feats, high_res, points=None, mask_inputs=None, multimask_output=False):
        out = original(feats, high_res, points, mask_inputs, multimask_output)
        seen_mask_inputs.append(
            (mask_inputs, out.low_res_masks, multimask_output, None if points is None else points[1].shape[1])
        )
        return out

    model.forward_heads = recording
    # clicks on frames 0 (box) and 2, corrected; frame 1 tracked
    plan = PromptPlan(3, True, [0, 2], [0], [0, 2])
    config = PromptConfig(num_correction_clicks=3)
    out = forward_clip(model, video, masks, clip, plan, config, torch.Generator().manual_seed(0))
    assert [len(p.masks) for p in out] == [4, 1, 4]  # the first prompt + 3 clicks on corrected frames
    assert out[1].masks[0].shape == (2, 3, 64, 64)  # tracked frames: multimask output
    assert out[0].masks[0].shape == (2, 1, 64, 64)  # a box is 2 points: one mask
    assert out[2].masks[0].shape == (2, 3, 64, 64) and out[2].masks[1].shape == (2, 1, 64, 64)
    assert all(p.ious[0].shape[0] == 2 and p.object_score_logits[0].shape == (2, 1) for p in out)
    # each correction step takes the previous step's low-res logits as its mask input
    corrections = [s for s in seen_mask_inputs if s[0] is not None]
    assert len(corrections) == 6 and all(s[3] >= 2 for s in corrections)
    for previous, current in itertools.pairwise(seen_mask_inputs):
        if current[0] is not None:
            assert current[0] is previous[1]

    # mask prompts: the frame's output is the mask itself (+-10 logits), no corrections
    plan = PromptPlan(3, False, [0], [], [])
    out = forward_clip(model, video, masks, clip, plan, config)
    assert [len(p.masks) for p in out] == [1, 1, 1]
    assert torch.equal(out[0].masks[0][:, 0] > 0, masks[0])


class _StubModel:
    """What forward_clip calls of a SAM 2, with no network: masks = the input mask logits or zeros."""

    def __init__(self, size: int):
        from unveil.models.sam2.model import FrameFeatures

        self.size = size
        self._features = FrameFeatures

    def frame_features(self, images):
        n = images.shape[0]
        return self._features(
            [images.new_zeros(n, 1, 1, 1)] * 2, images.new_zeros(n, 1, 1, 1), images.new_zeros(n, 1, 1, 1)
        )

    def _heads(self, n, low=None):
        from unveil.models.sam2.model import HeadsOutput

        low = torch.zeros(n, 1, self.size // 4, self.size // 4) if low is None else low
        high = torch.nn.functional.interpolate(low, (self.size, self.size))
        return HeadsOutput(low, high, torch.zeros(n, 1), low, high, torch.zeros(n, 4), torch.ones(n, 1))

    def mask_as_output(self, feats, high_res, mask):
        return self._heads(mask.shape[0])

    def condition_on_memory(self, t, is_init, frame, memory, num_frames):
        return frame.feats

    def forward_heads(self, feats, high_res, points=None, mask_inputs=None, multimask_output=False):
        return self._heads(feats.shape[0], mask_inputs)

    def use_multimask(self, is_init, num_points):
        return False

    def encode_memory(self, frame, high_res_masks, object_score, from_points):
        return None, None


def test_correction_clicks_come_from_the_truth_one_time_in_ten(monkeypatch):
    import unveil.finetune.sam2_train as train

    video, masks, clip = _clip(frames=1, objects=1)
    calls = []
    real = train.sample_clicks

    def counting(truth, pred=None, generator=None):
        calls.append(pred is None)
        return real(truth, pred, generator)

    monkeypatch.setattr(train, "sample_clicks", counting)
    generator = torch.Generator().manual_seed(0)
    config = PromptConfig(
        prob_box=1.0, num_correction_clicks=7
    )  # the box is not a click: only corrections count
    model = _StubModel(64)
    for _ in range(300):
        out = train.forward_clip(
            model, video, masks, clip, plan_prompts(1, config, generator), config, generator
        )
        assert len(out[0].masks) == 8  # the box, then 7 corrections
    assert len(calls) == 2100 and _binomial_ok(sum(calls), 2100, 0.1)


def test_training_step_learns_on_cpu_and_freezing_options():
    from unveil.finetune.sam2_train import SAM2FineTune

    video, masks, clip = _clip(frames=2, objects=1, clips=2)
    batch = {"frames": video, "masks": masks, "object_clip": clip}
    torch.manual_seed(0)
    # points on frame 0 with one correction click; frame 1 tracked through the memory
    prompts = PromptConfig(
        prob_points=1.0, num_init_cond_frames=1, num_frames_to_correct=1, num_correction_clicks=1
    )
    module = SAM2FineTune(
        size="tiny", image_size=64, trunk_args={"window_spec": (8, 4, 8, 4)}, prompts=prompts
    )
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = {n: p.grad for n, p in module.model.named_parameters()}
    assert grads["image_encoder.trunk.blocks.0.attn.qkv.weight"].abs().sum() > 0
    assert grads["sam_mask_decoder.iou_prediction_head.layers.0.weight"].abs().sum() > 0
    assert grads["memory_attention.layers.0.self_attn.q_proj.weight"].abs().sum() > 0  # frame 1 was tracked
    image, image_masks, image_clip = _clip(frames=1, objects=2)  # an image: clicks and corrections, no memory
    image_loss = module.training_step({"frames": image, "masks": image_masks, "object_clip": image_clip}, 1)
    assert torch.isfinite(image_loss) and image_loss > 0
    assert {"prompts", "loss_weights"} <= set(module.hparams) and isinstance(module.hparams["prompts"], dict)

    frozen = SAM2FineTune(
        size="tiny", image_size=64, trunk_args={"window_spec": (8, 4, 8, 4)}, freeze_image_encoder=True
    )
    assert not any(p.requires_grad for p in frozen.model.image_encoder.parameters())
    assert all(p.requires_grad for p in frozen.model.sam_mask_decoder.parameters())
    decoder = SAM2FineTune(
        size="tiny", image_size=64, trunk_args={"window_spec": (8, 4, 8, 4)}, train_only_decoder=True
    )
    trained = {n.split(".")[0] for n, p in decoder.model.named_parameters() if p.requires_grad}
    assert trained == {"sam_mask_decoder"}


# -------------------------------------------------------------------------------------------------- optimiser


def test_parameter_groups_follow_the_official_rules():
    from unveil.finetune.sam2_train import cosine_to_fraction, parameter_groups

    model = _tiny_model()
    groups = parameter_groups(model, lr=5e-6, vision_lr=3e-6, weight_decay=0.1, layer_decay=0.9)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    blocks = len(model.image_encoder.trunk.blocks)  # 12 for tiny

    def group(name):
        return by_param[id(named[name])]

    assert group("sam_mask_decoder.iou_prediction_head.layers.0.weight")["lr"] == 5e-6
    assert group("memory_attention.layers.0.self_attn.q_proj.weight")["lr"] == 5e-6
    assert group("image_encoder.neck.convs.0.conv.weight")["lr"] == pytest.approx(3e-6)
    assert group("image_encoder.trunk.pos_embed")["lr"] == pytest.approx(3e-6)  # exempt from layer decay
    assert group("image_encoder.trunk.pos_embed_win")["lr"] == pytest.approx(3e-6)
    assert group("image_encoder.trunk.patch_embed.proj.weight")["lr"] == pytest.approx(
        3e-6 * 0.9 ** (blocks + 1)
    )
    for i in (0, 5, blocks - 1):
        assert group(f"image_encoder.trunk.blocks.{i}.attn.qkv.weight")["lr"] == pytest.approx(
            3e-6 * 0.9 ** (blocks - i)
        )
    # no decay on biases and LayerNorms; decay elsewhere (LayerNorm2d and embeddings included, as the official rule)
    assert group("image_encoder.trunk.blocks.0.attn.qkv.bias")["weight_decay"] == 0.0
    assert group("image_encoder.trunk.blocks.0.norm1.weight")["weight_decay"] == 0.0
    assert group("sam_mask_decoder.transformer.norm_final_attn.weight")["weight_decay"] == 0.0
    assert group("image_encoder.trunk.blocks.0.attn.qkv.weight")["weight_decay"] == 0.1
    assert group("no_mem_embed")["weight_decay"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(named)

    assert cosine_to_fraction(0, 100, 0.1) == 1.0
    assert cosine_to_fraction(50, 100, 0.1) == pytest.approx(0.55)
    assert cosine_to_fraction(100, 100, 0.1) == pytest.approx(0.1)
    assert cosine_to_fraction(4, 100, 0.1, warmup_steps=10) == pytest.approx(
        0.5 * cosine_to_fraction(4, 100, 0.1)
    )


# ------------------------------------------------------------------------------------------ data


def test_augmentation_is_consistent_over_the_clip_and_keeps_masks_on_their_pixels():
    from unveil.datasets.sam2_data import SAM2Augment

    torch.manual_seed(0)
    masks = torch.zeros(4, 2, 96, 96, dtype=torch.bool)
    masks[:, 0, 20:60, 30:50] = True
    masks[:, 1, 60:80, 10:40] = True
    frames = masks[:, :1].expand(-1, 3, -1, -1).to(torch.uint8) * 200 + 20  # the objects are bright
    augment = SAM2Augment(64, jitter=(0, 0, 0), grayscale=0.0, frame_jitter=(0, 0, 0))
    ious = []
    for _ in range(20):
        video, out = augment(frames, masks)
        assert video.shape == (4, 3, 64, 64) and video.dtype == torch.float32 and out.shape == (4, 2, 64, 64)
        assert torch.equal(video[0], video[3]) and torch.equal(out[0], out[3])  # one draw for the whole clip
        bright = video[0, 0] > 0.5
        inter = (bright & out[0, 0]).sum().item()
        ious.append(inter / max((bright | out[0, 0]).sum().item(), 1))
        assert out[0].flatten(1).any(1).all()  # an object never leaves the first frame
    assert min(ious) > 0.85
    # the per-frame colour jitter makes frames differ
    video, _ = SAM2Augment(64, grayscale=0.0)(frames, masks)
    assert not torch.equal(video[0], video[1])
    _, flipped_masks = SAM2Augment(
        96, hflip=1.0, degrees=0, shear=0, jitter=(0, 0, 0), grayscale=0, frame_jitter=(0, 0, 0)
    )(frames, masks)
    assert torch.equal(flipped_masks, masks.flip(-1))
    with pytest.raises(ValueError, match="uint8"):
        augment(frames.float(), masks)


def test_datamodule_gives_clip_batches_and_validation_videos(tmp_path):
    from unveil.datasets.sam2_data import SAM2DataModule
    from unveil.datasets.synth_vos import make_vos_folder

    root = make_vos_folder(tmp_path / "vos", train_videos=3, val_videos=2, frames=8, size=48)
    data = SAM2DataModule(root, image_size=64, num_frames=4, batch_size=2, num_workers=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["frames"].shape == (2, 4, 3, 64, 64)
    objects = batch["masks"].shape[1]
    assert batch["masks"].shape == (4, objects, 64, 64) and batch["masks"].dtype == torch.bool
    assert batch["object_clip"].tolist() == sorted(batch["object_clip"].tolist()) and set(
        batch["object_clip"].tolist()
    ) == {0, 1}
    video = next(iter(data.val_dataloader()))
    assert video["masks"].shape[:1] == (8,) and Path(video["folder"]).is_dir() and len(video["stems"]) == 8

    # another source plugs in through train_dataset and gets the augmentation
    class Images(torch.utils.data.Dataset):
        def __init__(self, transform=None):
            self.transform = transform

        def __len__(self):
            return 4

        def __getitem__(self, index):
            frames, masks = self.transform(
                torch.zeros(1, 3, 40, 40, dtype=torch.uint8), torch.ones(1, 2, 40, 40, dtype=torch.bool)
            )
            return {"frames": frames, "masks": masks, "key": str(index)}

    data = SAM2DataModule(root, image_size=32, train_dataset=Images, batch_size=2, num_workers=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["frames"].shape == (2, 1, 3, 32, 32) and batch["masks"].shape == (1, 4, 32, 32)
    with pytest.raises(ValueError, match="root"):
        SAM2DataModule()


# ---------------------------------------------------------------------------------------------- starting points


def _abswin_export(path: Path) -> dict:
    from unveil.models import convert_state_dict, mae_hiera_tiny_224

    torch.manual_seed(0)
    mae = mae_hiera_tiny_224(abs_win_pos_embed=True)
    export, _ = convert_state_dict(mae.state_dict(), "sam2", source="official", keep_head=False)
    torch.save({"model": export}, path)
    return mae.state_dict()


@pytest.mark.slow
def test_start_from_an_official_checkpoint_a_trunk_or_random(tmp_path):
    from unveil.finetune.sam2_train import build_sam2

    reference = _tiny_model()
    torch.save({"model": reference.official_state_dict()}, tmp_path / "sam2.1_tiny.pt")
    args = {"size": "tiny", "image_size": 64, "trunk_args": {"window_spec": (8, 4, 8, 4)}}
    model, origin = build_sam2(**args, init_checkpoint=str(tmp_path / "sam2.1_tiny.pt"))
    assert "every weight" in origin
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    mae = _abswin_export(tmp_path / "trunk.pt")
    model, origin = build_sam2(**args, init_trunk=str(tmp_path / "trunk.pt"))
    trunk = model.image_encoder.trunk.state_dict()
    assert all(torch.equal(trunk[k], mae[k]) for k in trunk) and "new (untrained)" in origin
    assert tuple(trunk["pos_embed"].shape[2:]) == (14, 14)  # the table's shape came from the file

    random, origin = build_sam2(**args)
    assert origin == "random weights"
    assert not torch.equal(
        random.image_encoder.trunk.state_dict()["blocks.0.attn.qkv.weight"], trunk["blocks.0.attn.qkv.weight"]
    )
    with pytest.raises(ValueError, match="holds a tiny trunk"):
        build_sam2(size="small", image_size=64, init_trunk=str(tmp_path / "trunk.pt"))
    official = reference.official_state_dict()
    torch.save(
        {"model": {k: v for k, v in official.items() if not k.startswith("memory_encoder.")}},
        tmp_path / "cut.pt",
    )
    with pytest.raises(ValueError, match="cut.pt' does not fit sam2 tiny: .*missing"):
        build_sam2(**args, init_checkpoint=str(tmp_path / "cut.pt"))


# -------------------------------------------------------------------------------------------------- CLI chain


def _unveil(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [UNVEIL, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_cli_chain_synth_vos_then_fit_from_random_and_from_a_trunk_export(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _unveil(
        "synth", "vos", "--out", "data/vos_shapes", "--train_videos", "2", "--val_videos", "1", cwd=tmp_path
    )
    _abswin_export(tmp_path / "trunk.pt")
    fast = [
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "2",
        "--data.init_args.num_workers",
        "0",
        "--model.init_args.val_max_frames",
        "4",
        "--trainer.log_every_n_steps",
        "1",
    ]
    for start, extra in (("random", []), ("trunk", ["--model.init_args.init_trunk", "trunk.pt"])):
        root = f"runs/{start}"
        out = _unveil(
            "fit",
            "--config",
            "quickstart_sam2",
            *fast,
            *extra,
            "--trainer.default_root_dir",
            root,
            "--trainer.logger.init_args.save_dir",
            root,
            cwd=tmp_path,
        )
        assert ("trunk from 'trunk.pt'" in out.stdout) == (start == "trunk")
        run = tmp_path / root / "version_0"
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert len(list((run / "masks").glob("step_*.png"))) == 1
        events = EventAccumulator(str(run)).Reload()
        (jf,) = events.Scalars("val/J&F")
        assert 0.0 <= jf.value <= 1.0
        for tag in ("val/miou@1", "val/miou@5"):  # clicks on the validation videos' first frames
            (miou,) = events.Scalars(tag)
            assert 0.0 <= miou.value <= 1.0
        assert "train/loss" in events.Tags()["scalars"]


# ------------------------------------------------------------------------------------------------------ recipes


def test_mose_recipe_holds_the_official_yaml_values():
    """sam2.1_bplus_mose_finetune against the official yaml shipped in the sam2 package."""
    import yaml
    from unveil.launch.cli import parse_recipe

    sam2 = pytest.importorskip("sam2")
    official = yaml.safe_load(
        (
            Path(sam2.__file__).parent / "configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml"
        ).read_text()
    )
    scratch, trainer = official["scratch"], official["trainer"]
    model, optim = trainer["model"], trainer["optim"]
    config = parse_recipe("sam2.1_bplus_mose_finetune")
    ours, data = config.model.init_args, config.data.init_args
    assert ours.lr == scratch["base_lr"] and ours.vision_lr == scratch["vision_lr"]
    assert ours.image_size == data.image_size == scratch["resolution"]
    assert data.num_frames == scratch["num_frames"] and data.max_objects == scratch["max_num_objects"]
    assert data.batch_size == scratch["train_batch_size"] and data.num_workers == scratch["num_train_workers"]
    assert config.trainer.max_epochs == scratch["num_epochs"] * official["dataset"]["multiplier"]
    assert config.trainer.devices == official["launcher"]["gpus_per_node"]
    assert config.seed_everything == trainer["seed_value"]
    assert config.trainer.gradient_clip_val == optim["gradient_clip"]["max_norm"]
    assert config.trainer.precision == "bf16-mixed" and optim["amp"]["amp_dtype"] == "bfloat16"
    (modifier,) = optim["param_group_modifiers"]
    assert (
        ours.layer_decay == modifier["layer_decay_value"]
        and modifier["overrides"][0]["pattern"] == "*pos_embed*"
    )
    assert ours.weight_decay == optim["options"]["weight_decay"][0]["scheduler"]["value"]
    assert ours.drop_path_rate == model["image_encoder"]["trunk"]["drop_path_rate"]
    prompts = ours.prompts
    assert prompts.prob_points == model["prob_to_use_pt_input_for_train"]
    assert prompts.prob_box == model["prob_to_use_box_input_for_train"]
    assert prompts.prob_clicks_from_gt == model["prob_to_sample_from_gt_for_train"]
    assert prompts.num_frames_to_correct == model["num_frames_to_correct_for_train"]
    assert prompts.num_init_cond_frames == model["num_init_cond_frames_for_train"]
    assert prompts.num_correction_clicks == model["num_correction_pt_per_frame"]
    assert prompts.add_corrected_as_cond == model["add_all_frames_to_correct_as_cond"]
    weights = trainer["loss"]["all"]["weight_dict"]
    assert (
        ours.loss_weights.focal,
        ours.loss_weights.dice,
        ours.loss_weights.iou,
        ours.loss_weights.object_score,
    ) == (
        weights["loss_mask"],
        weights["loss_dice"],
        weights["loss_iou"],
        weights["loss_class"],
    )
    # the augmentation's defaults are the yaml's transforms
    from unveil.datasets.sam2_data import SAM2Augment

    transforms = {
        t["_target_"].rsplit(".", 1)[1]: t for t in official["vos"]["train_transforms"][0]["transforms"]
    }
    augment = SAM2Augment(64)
    assert augment.affine.degrees == [
        -transforms["RandomAffine"]["degrees"],
        transforms["RandomAffine"]["degrees"],
    ]
    jitters = [
        t
        for t in official["vos"]["train_transforms"][0]["transforms"]
        if t["_target_"].endswith("ColorJitter")
    ]
    clip_jitter, frame_jitter = augment.clip_colour.transforms[0], augment.frame_colour
    for ours_jitter, theirs in ((clip_jitter, jitters[0]), (frame_jitter, jitters[1])):
        assert ours_jitter.brightness == (1 - theirs["brightness"], 1 + theirs["brightness"])
        assert ours_jitter.contrast == (1 - theirs["contrast"], 1 + theirs["contrast"])
    assert augment.clip_colour.transforms[1].p == transforms["RandomGrayscale"]["p"]


@pytest.mark.parametrize("size", ["tiny", "small", "bplus", "large"])
def test_from_mae_recipes_train_on_the_sa1b_sav_mix(size):
    from unveil.launch.cli import parse_recipe
    from unveil.launch.recipes import recipes_dir

    config = parse_recipe(f"sam2_{size}_from_mae")
    mix = config.data.init_args.train_dataset
    assert mix.class_path == "unveil.datasets.mixed.WeightedMix"
    assert [d.class_path for d in mix.init_args.datasets] == [
        "unveil.datasets.sa1b.SA1BFolder",
        "unveil.datasets.sav.SAVFolder",
    ]
    assert config.model.init_args.size == {"bplus": "base_plus"}.get(size, size)
    text = (recipes_dir() / f"sam2_{size}_from_mae.yaml").read_text()
    assert "not among the sources available here" in text and "unveil choice" in text


@pytest.mark.slow
def test_sam2_proof_script_runs_both_starts_and_draws_the_curve(tmp_path):
    """``benchmarks/sam2_proof.py`` with 2 steps: both runs through ``unveil fit``, the table and the PNG."""
    _abswin_export(tmp_path / "trunk.pt")
    _unveil("synth", "vos", "--out", "vos", "--train_videos", "2", "--val_videos", "1", cwd=tmp_path)
    script = Path(__file__).parents[1] / "benchmarks" / "sam2_proof.py"
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(UNVEIL).parent}:{os.environ['PATH']}",
    }
    args = ["--trunk", "trunk.pt", "--data", "vos", "--steps", "2", "--eval-every", "2", "--out", "proof.png"]
    extra = ["--", "--data.init_args.num_workers", "0", "--model.init_args.val_max_frames", "4"]
    result = subprocess.run(
        [sys.executable, str(script), *args, *extra],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("2 ")]
    assert len(rows) == 1 and all(0.0 <= float(v) <= 1.0 for v in rows[0][1:])
    assert (tmp_path / "proof.png").is_file() and "init_trunk" in result.stdout


@pytest.mark.slow
def test_readme_sam2_chain_from_the_quickstart_mae(tmp_path):
    """The README's chain, each command as printed with only sizes and steps made smaller: the quickstart MAE at
    Hiera-T widths, ``unveil export --format sam2``, ``unveil synth vos``, ``quickstart_sam2`` from the export."""
    _unveil("synth", "images", "--out", "data/shapes", "--num_classes", "2", "--train_per_class", "4",
            "--val_per_class", "2", "--size", "64", cwd=tmp_path)  # fmt: skip
    hiera_t = "--model.init_args.model.init_args."
    _unveil("fit", "--config", "quickstart", "--config", "presets/abswin", f"{hiera_t}embed_dim=96",
            f"{hiera_t}num_heads=1", f"{hiera_t}stages=[1,2,7,2]", "--trainer.max_steps", "1",
            "--trainer.val_check_interval", "1", "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
            "--model.init_args.log_images_every_n_steps", "0", cwd=tmp_path)  # fmt: skip
    (ckpt,) = (tmp_path / "runs/quickstart").glob("version_*/checkpoints/last.ckpt")
    _unveil(
        "export", str(ckpt), "--format", "sam2", "--out", "exports/quickstart_sam2_trunk.pt", cwd=tmp_path
    )
    _unveil(
        "synth", "vos", "--out", "data/vos_shapes", "--train_videos", "2", "--val_videos", "1", cwd=tmp_path
    )
    out = _unveil("fit", "--config", "quickstart_sam2", "--model.init_args.init_trunk",
                  "exports/quickstart_sam2_trunk.pt", "--trainer.max_steps", "1", "--trainer.val_check_interval", "1",
                  "--data.init_args.num_workers", "0", "--model.init_args.val_max_frames", "3", cwd=tmp_path)  # fmt: skip
    assert "trunk from 'exports/quickstart_sam2_trunk.pt'" in out.stdout
    (sam2_ckpt,) = (tmp_path / "runs/quickstart_sam2").glob("version_*/checkpoints/last.ckpt")
    clicks = _unveil("clicks", str(sam2_ckpt.relative_to(tmp_path)), "--data", "data/vos_shapes", cwd=tmp_path)
    assert "miou@1 " in clicks.stdout and "miou@5 " in clicks.stdout and "objects, 1 images)" in clicks.stdout
    pretrained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    key = "blocks.0.attn.qkv.weight"
    start = torch.load(sam2_ckpt, map_location="cpu", weights_only=True)["state_dict"][
        f"model.image_encoder.trunk.{key}"
    ]
    assert (
        start - pretrained[f"model.{key}"]
    ).abs().max() < 1e-2  # one small step away from the MAE's weights
