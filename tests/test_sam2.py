"""SAM 2: unveil's model and predictors against the official ``sam2`` package (1.1.0, test-only).

Both sides get the same random weights (the official initialisation, every tensor then moved by
N(0, 0.02) noise so that no layer is left at an identity-like init) and the same inputs, in fp32 on
the CPU, with the official post-processing on for both (dynamic multimask fallback, binarised
prompt masks in the video memory) except hole filling, which the official package skips on the CPU.

Fast tests: the image encoder and predictor at 1024 with the tiny model. ``pytest -m slow``: base_plus
for the image; the video predictor with the tiny model at 256 and 512 px and tiny and base_plus at
1024; the video predictor's editing calls (clear_all_prompts_in_frame, remove_object, ...) at 128 px;
``unveil segment`` with an official-format checkpoint; the quickstart export into SAM 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sam2_official = pytest.importorskip("sam2.build_sam", reason="the official sam2 package is a dev dependency")

from unveil.models.sam2 import SAM2, ImagePredictor, SAM2Config, VideoPredictor  # noqa: E402
from unveil.models.sam2.postprocess import small_components  # noqa: E402

CONFIGS = {"tiny": "configs/sam2.1/sam2.1_hiera_t.yaml", "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml"}
TOL = 1e-4
MEASURED: dict[str, float] = {}  # largest difference per comparison, printed with `pytest -s`


@pytest.fixture(autouse=True)
def _native_decord_bridge():
    """The official SAM 2 loader sets decord's torch bridge for the whole process; later tests expect NDArrays."""
    yield
    import decord

    decord.bridge.set_bridge("native")


def close(what: str, diff) -> bool:
    """Record a max abs difference and check it against the bar."""
    diff = float(diff)
    MEASURED[what] = max(MEASURED.get(what, 0.0), diff)
    print(f"PARITY {what}: {MEASURED[what]:.2e}")
    return diff <= TOL


def official_model(size: str, image_size: int = 1024, video: bool = False, seed: int = 0):
    """An official SAM 2.1 model (image or video predictor) with random weights, nothing downloaded."""
    torch.manual_seed(seed)
    extra = [f"++model.image_size={image_size}"] if image_size != 1024 else []
    if video:
        model = sam2_official.build_sam2_video_predictor(CONFIGS[size], None, device="cpu", hydra_overrides_extra=extra)
        model.fill_hole_area = 0  # needs the CUDA extension; compared with it off on both sides
    else:
        model = sam2_official.build_sam2(CONFIGS[size], None, device="cpu", hydra_overrides_extra=extra)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def ours_from(official, size: str, image_size: int = 1024) -> SAM2:
    model = SAM2(SAM2Config(trunk=size, image_size=image_size)).eval()
    model.load_official_state_dict({"model": official.state_dict()})
    return model


def test_official_state_dict_loads_strictly_and_round_trips():
    official = official_model("tiny")
    ours = ours_from(official, "tiny")
    back = ours.official_state_dict()
    reference = official.state_dict()
    assert set(back) == set(reference)
    assert all(torch.equal(back[k], reference[k]) for k in reference)
    broken = dict(reference)
    broken.pop("memory_encoder.fuser.layers.1.gamma")
    with pytest.raises(ValueError, match="missing"):
        SAM2(SAM2Config(trunk="tiny")).load_official_state_dict(broken)
    broken = {**reference, "sam_mask_decoder.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="unexpected"):
        SAM2(SAM2Config(trunk="tiny")).load_official_state_dict(broken)


# ---- image ---------------------------------------------------------------------------------------

IMAGE_PROMPTS = {
    "point": dict(point_coords=np.array([[410.0, 290.0]]), point_labels=np.array([1])),
    "two points and a negative": dict(
        point_coords=np.array([[410.0, 290.0], [150.0, 120.0], [620.0, 480.0]]), point_labels=np.array([1, 1, 0])
    ),
    "box": dict(box=np.array([100.0, 90.0, 520.0, 410.0])),
    "box and point": dict(
        box=np.array([100.0, 90.0, 520.0, 410.0]), point_coords=np.array([[300.0, 250.0]]), point_labels=np.array([1])
    ),
    "two boxes": dict(box=np.array([[100.0, 90.0, 520.0, 410.0], [40.0, 300.0, 700.0, 590.0]])),
}


def test_image_encoder_and_predictor_match_official(tmp_path, size="tiny"):
    _image_parity(size)


@pytest.mark.slow
def test_image_encoder_and_predictor_match_official_base_plus():
    _image_parity("base_plus")


def _image_parity(size: str):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    official = official_model(size)
    ours = ours_from(official, size)
    image = (np.random.default_rng(0).random((600, 800, 3)) * 255).astype(np.uint8)
    # the three FPN levels, caught on the way through set_image (one encoder pass per side)
    caught = {}
    official.image_encoder.register_forward_hook(lambda m, i, o: caught.setdefault("official", o))
    ours.image_encoder.register_forward_hook(lambda m, i, o: caught.setdefault("ours", o))
    reference, predictor = SAM2ImagePredictor(official), ImagePredictor(ours)
    reference.set_image(image)
    predictor.set_image(image)
    for level in range(3):
        expected = caught["official"]["backbone_fpn"][level]
        assert caught["ours"].fpn[level].shape == expected.shape
        assert close(f"{size} FPN level {level}", (caught["ours"].fpn[level] - expected).abs().max())
        assert (caught["ours"].pos[level] - caught["official"]["vision_pos_enc"][level]).abs().max() <= TOL

    def check(kwargs, what):
        for multimask in (True, False):
            masks_ref, iou_ref, low_ref = reference.predict(**kwargs, multimask_output=multimask)
            masks, iou, low = predictor.predict(**kwargs, multimask_output=multimask)
            assert masks.shape == masks_ref.shape and masks.dtype == masks_ref.dtype, what
            assert low.shape == low_ref.shape and iou.shape == iou_ref.shape, what
            assert close(f"{size} image low-res logits", np.abs(low - low_ref).max()), (what, multimask)
            assert close(f"{size} image IoU", np.abs(iou - iou_ref).max()), (what, multimask)
            assert np.array_equal(masks, masks_ref), (what, multimask)
        return low_ref

    for what, kwargs in IMAGE_PROMPTS.items():
        low_ref = check(kwargs, what)
    # a low-res mask input from a previous prediction, with a click
    previous = reference.predict(**IMAGE_PROMPTS["point"], multimask_output=False)[2]
    check(dict(**IMAGE_PROMPTS["point"], mask_input=previous), "mask input")
    assert low_ref.shape == (2, 1, 256, 256)


# ---- video ---------------------------------------------------------------------------------------


def write_frames(folder: Path, count: int = 8, size=(240, 320)) -> Path:
    """A JPEG folder: two shapes moving over a noisy background."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    background = (np.random.default_rng(0).random((*size, 3)) * 60).astype(np.uint8)
    for t in range(count):
        image = Image.fromarray(background.copy())
        draw = ImageDraw.Draw(image)
        draw.ellipse([40 + 10 * t, 60, 120 + 10 * t, 140], fill=(220, 40, 40))
        draw.rectangle([200, 100 + 5 * t, 280, 180 + 5 * t], fill=(40, 200, 60))
        image.save(folder / f"{t:05d}.jpg", quality=90)
    return folder


@pytest.mark.slow  # about 2 minutes on 2 cores: the official predictor is slow on the CPU
def test_video_predictor_matches_official_tiny_256(tmp_path):
    _video_parity("tiny", 256, tmp_path)


@pytest.mark.slow  # the official predictor's 1024-px frames take minutes each on a shared 2-core machine
def test_video_predictor_matches_official_tiny_512(tmp_path):
    _video_parity("tiny", 512, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["tiny", "base_plus"])
def test_video_predictor_matches_official_1024(tmp_path, size):
    _video_parity(size, 1024, tmp_path)


def _video_parity(size: str, image_size: int, tmp_path: Path):
    """A click on frame 0 and forward tracking; a second object from frame 2 and a correction on
    frame 4; forward from frame 2, then in reverse from frame 6 to 0 (the official predictor needs an
    object pointer to attend to in fp32, hence the starts)."""
    folder = write_frames(tmp_path / "frames")
    official = official_model(size, image_size, video=True)
    ours = VideoPredictor(ours_from(official, size, image_size), fill_hole_area=0)
    ref_state, state = official.init_state(str(folder)), ours.init_state(str(folder))

    def same(expected, got, what):
        assert expected[0] == got[0] and list(expected[1]) == list(got[1]), what
        assert expected[2].shape == got[2].shape, what
        assert close(f"{size} {image_size}px video logits", (expected[2] - got[2]).abs().max()), what

    def prompt(*args, **kwargs):
        same(official.add_new_points_or_box(ref_state, *args, **kwargs), ours.add_new_points_or_box(state, *args, **kwargs), args)

    def propagate(**kwargs):
        expected = list(official.propagate_in_video(ref_state, **kwargs))
        got = list(ours.propagate_in_video(state, **kwargs))
        assert [e[0] for e in expected] == [g[0] for g in got]
        for e, g in zip(expected, got):
            same(e, g, (kwargs, e[0]))
        return len(got)

    prompt(0, 1, points=[[80, 100]], labels=[1])
    assert propagate() == 8
    prompt(2, 2, points=[[240, 150]], labels=[1])
    prompt(4, 1, points=[[90, 100], [150, 200]], labels=[1, 0], clear_old_points=False)
    assert propagate(start_frame_idx=2) == 6
    assert propagate(start_frame_idx=6, reverse=True) == 7

    for obj in range(2):
        for key, ours_frames in (("cond_frame_outputs", state.outputs[obj].cond), ("non_cond_frame_outputs", state.outputs[obj].non_cond)):
            ref_frames = ref_state["output_dict_per_obj"][obj][key]
            assert sorted(ref_frames) == sorted(ours_frames)
            for frame_idx, ref in ref_frames.items():
                out = ours_frames[frame_idx]
                assert close(f"{size} {image_size}px object pointers", (ref["obj_ptr"] - out.obj_ptr).abs().max())
                assert close(f"{size} {image_size}px object scores", (ref["object_score_logits"] - out.object_score).abs().max())
                assert (ref["pred_masks"] - out.pred_masks).abs().max() <= TOL
                # both keep the memory in bfloat16: equal up to one bfloat16 rounding step
                torch.testing.assert_close(out.maskmem_features.float(), ref["maskmem_features"].float(), rtol=2**-7, atol=1e-3)
                close(f"{size} {image_size}px memories (bf16)", (out.maskmem_features.float() - ref["maskmem_features"].float()).abs().max())
                assert (ref["maskmem_pos_enc"][-1] - out.maskmem_pos_enc).abs().max() <= TOL

    ours.reset_state(state)
    assert state.obj_ids == [] and not state.outputs
    _, ids, masks = ours.add_new_mask(state, 3, 5, np.zeros((240, 320), bool) | (np.arange(320) < 100))
    assert ids == [5] and masks.shape == (1, 1, 240, 320)


def _same_output(expected, got, label: str, where=None):
    """(frame_idx, obj_ids, masks) of the official and of our predictor."""
    assert expected[0] == got[0] and list(expected[1]) == list(got[1]), (label, where)
    assert expected[2].shape == got[2].shape, (label, where)
    assert close(label, (expected[2] - got[2]).abs().max()), (label, where)


def _same_memories(ref_state, state, what: str):
    """Every stored output of every object: the same frames, pointers, scores, logits, memories."""
    assert len(ref_state["output_dict_per_obj"]) == len(state.outputs)
    for obj in range(len(state.outputs)):
        for key, ours_frames in (("cond_frame_outputs", state.outputs[obj].cond), ("non_cond_frame_outputs", state.outputs[obj].non_cond)):
            ref_frames = ref_state["output_dict_per_obj"][obj][key]
            assert sorted(ref_frames) == sorted(ours_frames), (what, obj, key)
            for frame_idx, ref in ref_frames.items():
                out = ours_frames[frame_idx]
                assert close(f"{what} object pointers", (ref["obj_ptr"] - out.obj_ptr).abs().max())
                assert close(f"{what} object scores", (ref["object_score_logits"] - out.object_score).abs().max())
                assert (ref["pred_masks"] - out.pred_masks).abs().max() <= TOL
                torch.testing.assert_close(out.maskmem_features.float(), ref["maskmem_features"].float(), rtol=2**-7, atol=1e-3)
        assert sorted(ref_state["frames_tracked_per_obj"][obj]) == sorted(state.frames_tracked[obj]), (what, obj)
        assert sorted(ref_state["point_inputs_per_obj"][obj]) == sorted(state.point_inputs[obj]), (what, obj)


@pytest.mark.slow  # about 1 CPU-minute per case: the official predictor and hydra model builds
@pytest.mark.parametrize("options", ["defaults", "non-overlap, corrections as conditioning"])
def test_video_predictor_editing_api_matches_official(tmp_path, options):
    """The official editing calls, one after another at 128 px on 4 frames: three objects started by
    a click, a box and a mask; extra clicks kept with ``clear_old_points=False``; a correction on a
    tracked frame; ``clear_all_prompts_in_frame`` on a correction and on a first prompt;
    ``remove_object``; forward and reverse propagation between them."""
    extra = dict(non_overlap_masks=True, add_all_frames_to_correct_as_cond=True) if options != "defaults" else {}
    folder = write_frames(tmp_path / "frames", count=4, size=(96, 128))
    official = official_model("tiny", 128, video=True)
    for key, value in extra.items():
        setattr(official, key, value)
    ours = VideoPredictor(ours_from(official, "tiny", 128), fill_hole_area=0, **extra)
    ref_state, state = official.init_state(str(folder)), ours.init_state(str(folder))
    assert (state["num_frames"], state["video_height"], state["video_width"]) == (4, 96, 128)
    what = f"video editing ({options})"

    def both(method: str, *args, **kwargs):
        expected = getattr(official, method)(ref_state, *args, **kwargs)
        got = getattr(ours, method)(state, *args, **kwargs)
        if method == "remove_object":
            assert list(expected[0]) == got[0] and [f for f, _ in expected[1]] == [f for f, _ in got[1]], what
            for (_, e), (_, g) in zip(expected[1], got[1]):
                assert close(f"{what} logits", (e - g).abs().max())
        elif expected is not None:
            _same_output(expected, got, f"{what} logits", (method, args[:2]))
        return got

    def propagate(**kwargs):
        expected = list(official.propagate_in_video(ref_state, **kwargs))
        got = list(ours.propagate_in_video(state, **kwargs))
        assert [e[0] for e in expected] == [g[0] for g in got]
        for e, g in zip(expected, got):
            _same_output(e, g, f"{what} logits", (kwargs, e[0]))
        return [g[0] for g in got]

    mask = np.zeros((96, 128), bool)
    mask[30:70, 80:120] = True
    both("add_new_points_or_box", 0, 1, points=[[30, 40]], labels=[1])
    both("add_new_points", 0, 1, points=[[60, 50]], labels=[0], clear_old_points=False)
    both("add_new_points_or_box", 0, 2, box=[70, 30, 120, 80], points=[[95, 55]], labels=[1])
    both("add_new_mask", 0, 3, mask)
    assert propagate() == [0, 1, 2, 3]
    _same_memories(ref_state, state, what)
    both("add_new_points_or_box", 2, 1, points=[[45, 45], [20, 20]], labels=[1, 0])  # a correction on a tracked frame
    both("clear_all_prompts_in_frame", 2, 1)
    both("add_new_points_or_box", 2, 1, points=[[45, 45]], labels=[1])
    assert propagate(start_frame_idx=2) == [2, 3]
    both("clear_all_prompts_in_frame", 0, 2)  # object 2's first prompt: frame 0 becomes a tracked frame
    both("add_new_points_or_box", 0, 2, points=[[90, 60]], labels=[1])
    both("remove_object", 3)
    both("remove_object", 42)  # unknown: nothing happens
    with pytest.raises(RuntimeError, match="42"):
        ours.remove_object(state, 42, strict=True)
    assert propagate(start_frame_idx=2, reverse=True) == [2, 1, 0]  # frame 3 gives the pointers (see README)
    _same_memories(ref_state, state, what)
    both("remove_object", 1, need_output=False)
    both("remove_object", 2)  # the last object: a reset
    assert state.obj_ids == [] and not state.outputs


def test_clear_memory_around_input_drops_only_that_objects_nearby_tracked_frames(tmp_path):
    """``clear_non_cond_mem_around_input`` (the official 1.1.0 predictor calls a method it lacks
    when it is on, so this is checked on its own): a prompt on frame 9 of 12 drops that object's
    tracked memories of frames 2..16 (num_maskmem 7), keeps its frames 0-1 and the other object's."""
    from unveil.models.sam2 import sam2_hiera_tiny
    from unveil.models.sam2.model import FrameOutput

    predictor = VideoPredictor(sam2_hiera_tiny(image_size=128), clear_non_cond_mem_around_input=True)
    state = predictor.init_state(str(write_frames(tmp_path / "frames", count=2, size=(32, 32))))
    for obj_id in (1, 2):
        obj = predictor._obj_idx(state, obj_id)
        dummy = FrameOutput(torch.zeros(1, 1, 32, 32), torch.zeros(1, 256), torch.zeros(1, 1), torch.zeros(1, 64, 8, 8))
        state.outputs[obj].non_cond.update({t: dummy for t in range(12)})
        state.outputs[obj].cond[0] = dummy
    state.temp_outputs[0].cond[9] = dummy
    predictor.propagate_in_video_preflight(state)
    assert sorted(state.outputs[0].non_cond) == [1] and sorted(state.outputs[1].non_cond) == list(range(1, 12))
    assert sorted(state.outputs[0].cond) == [0, 9]


# ---- hole filling --------------------------------------------------------------------------------


def _components_brute_force(region: np.ndarray, max_area: float) -> np.ndarray:
    height, width = region.shape
    seen = np.zeros_like(region)
    out = np.zeros_like(region)
    for y in range(height):
        for x in range(width):
            if not region[y, x] or seen[y, x]:
                continue
            stack, members = [(y, x)], []
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                members.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < height and 0 <= nx < width and region[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            if len(members) <= max_area:
                for cy, cx in members:
                    out[cy, cx] = True
    return out


@pytest.mark.parametrize("density", [0.3, 0.55, 0.7])
def test_small_components_match_a_flood_fill(density):
    rng = np.random.default_rng(int(density * 100))
    regions = rng.random((3, 1, 37, 41)) < density
    got = small_components(torch.from_numpy(regions), 8).numpy()
    for i in range(3):
        assert np.array_equal(got[i, 0], _components_brute_force(regions[i, 0], 8))


# ---- trunk from an unveil MAE ----------------------------------------------------------------------


def test_abs_win_mae_trunk_loads_and_runs_the_predictors(tmp_path):
    from unveil.models import HieraDet, convert_state_dict, mae_hiera_tiny_224
    from unveil.models.sam2 import sam2_from_trunk

    torch.manual_seed(0)
    mae = mae_hiera_tiny_224(abs_win_pos_embed=True)
    lightning_ckpt = {"state_dict": {f"model.{k}": v for k, v in mae.state_dict().items()}}
    export, _ = convert_state_dict(mae.state_dict(), "sam2", source="official", keep_head=False)
    for state in (lightning_ckpt, {"model": export}):
        model, report = sam2_from_trunk(state, image_size=256)
        trunk = model.image_encoder.trunk.state_dict()
        assert all(torch.equal(trunk[k], mae.state_dict()[k]) for k in trunk)
        assert not report.missing_in_trunk and len(report.loaded) == len(trunk)
        assert {"sam_mask_decoder", "memory_attention", "memory_encoder", "image_encoder.neck"} <= set(report.new)
    _, report = sam2_from_trunk(lightning_ckpt, image_size=256)
    assert any("MAE" in reason for reason in report.unused.values())
    assert "new (untrained)" in report.summary()

    # the trunk computes what a HieraDet built from the same weights computes
    model = model.eval()
    reference = HieraDet(**{**_hieradet_args(model)}).eval()
    reference.load_state_dict(model.image_encoder.trunk.state_dict())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        for a, b in zip(model.image_encoder.trunk(x), reference(x)):
            torch.testing.assert_close(a, b)

    image = (np.random.default_rng(1).random((200, 300, 3)) * 255).astype(np.uint8)
    predictor = ImagePredictor(model)
    predictor.set_image(image)
    masks, ious, low_res = predictor.predict(point_coords=np.array([[150, 100]]), point_labels=np.array([1]))
    assert masks.shape == (3, 200, 300) and ious.shape == (3,) and low_res.shape == (3, 64, 64)
    video = VideoPredictor(model)
    state = video.init_state(str(write_frames(tmp_path / "frames", count=3)))
    video.add_new_points_or_box(state, 0, 1, points=[[80, 100]], labels=[1])
    frames = [f for f, _, m in video.propagate_in_video(state) if m.shape == (1, 1, 240, 320)]
    assert frames == [0, 1, 2]


def _hieradet_args(model: SAM2) -> dict:
    from unveil.models.hieradet import CONFIGS

    return {**CONFIGS[model.config.trunk], **model.config.trunk_args}


# ---- CLI -----------------------------------------------------------------------------------------


def _unveil() -> str:
    return str(Path(sys.executable).with_name("unveil"))


@pytest.mark.slow  # about 40 s: the official model and the CLI at 1024
def test_segment_image_cli_with_an_official_checkpoint_gives_the_official_mask(tmp_path):
    from PIL import Image
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from unveil.launch.segment import overlay

    official = official_model("tiny", seed=3)
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": official.state_dict()}, checkpoint)
    image = (np.random.default_rng(2).random((300, 400, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "mask.png"
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run(
        [_unveil(), "segment", "image", str(tmp_path / "photo.png"), "--point", "200,150", "--checkpoint", str(checkpoint), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    reference = SAM2ImagePredictor(official)
    reference.set_image(image)
    masks, _, _ = reference.predict(point_coords=np.array([[200, 150]]), point_labels=np.array([1]), multimask_output=False)
    assert np.array_equal(np.array(Image.open(out)), overlay(image, masks[:1] > 0))

    # the video command, on a short clip at a small input size
    frames = write_frames(tmp_path / "clip", count=3)
    result = subprocess.run(
        [_unveil(), "segment", "video", str(frames), "--point", "0,80,100", "--object", "--point", "1,240,150",
         "--checkpoint", str(checkpoint), "--image-size", "256", "--out", str(tmp_path / "overlays")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    result = subprocess.run([_unveil(), "segment", "image", str(tmp_path / "photo.png"), "--checkpoint", str(checkpoint)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "--point" in result.stderr


# ---- memory attention ----------------------------------------------------------------------------


def test_memory_attention_matches_official_in_inference_and_under_autograd():
    """RoPE memory attention on two memory maps plus object-pointer tokens (not rotated), batch 2: the
    inference path (keys rotated map by map into one new tensor) and the autograd path (rotation, then
    concatenation) both give the official output, and the autograd path the official gradients."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from unveil.models.sam2.memory import MemoryAttention

    config = OmegaConf.load(Path(sam2_official.__file__).parent / CONFIGS["tiny"])
    torch.manual_seed(0)
    official = instantiate(config.model.memory_attention).eval()  # the official module alone, from its config
    with torch.no_grad():
        for p in official.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ours = MemoryAttention(256, 64).eval()
    ours.load_state_dict(official.state_dict())
    hw, maps, ptr_tokens, batch = 64, 2, 8, 2  # an 8 x 8 map at 128 px
    torch.manual_seed(1)
    current, current_pos = torch.randn(batch, hw, 256), torch.randn(batch, hw, 256)
    memory, memory_pos = torch.randn(batch, maps * hw + ptr_tokens, 64), torch.randn(batch, maps * hw + ptr_tokens, 64)

    def reference(current, memory):
        seq_first = [current.transpose(0, 1)], memory.transpose(0, 1), [current_pos.transpose(0, 1)], memory_pos.transpose(0, 1)
        return official(*seq_first, num_obj_ptr_tokens=ptr_tokens).transpose(0, 1)

    def autograd(run):
        c, m = current.clone().requires_grad_(), memory.clone().requires_grad_()
        out = run(c, m)
        out.square().sum().backward()
        return out.detach(), c.grad, m.grad

    # the official rotation is first made under autograd (its cache would be an inference tensor)
    expected = autograd(reference)
    with torch.inference_mode():
        assert close("memory attention (inference)", (ours(current, current_pos, memory, memory_pos, ptr_tokens) - expected[0]).abs().max())
    # ours after an inference pass: its cached rotation serves autograd too
    got = autograd(lambda c, m: ours(c, current_pos, m, memory_pos, ptr_tokens))
    assert close("memory attention (autograd)", (got[0] - expected[0]).abs().max())
    for ref_grad, grad in zip(expected[1:], got[1:]):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4)


# ---- frames --------------------------------------------------------------------------------------


def test_lazy_frames_are_the_official_frames(tmp_path):
    """JPEG folder and mp4: each frame as the official loader makes it, decoded only when asked for."""
    import av
    from sam2.utils.misc import load_video_frames

    from unveil.datasets.sam2_frames import SAM2Frames

    folder = write_frames(tmp_path / "frames", count=3, size=(48, 64))
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for t in range(3):
            picture = np.full((48, 64, 3), 40 * t, np.uint8)
            picture[10:30, 10 + 5 * t : 30 + 5 * t] = 250
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    for source in (folder, video):
        expected, height, width = load_video_frames(str(source), 32, offload_video_to_cpu=True, compute_device=torch.device("cpu"))
        frames = SAM2Frames(source, 32)
        assert (len(frames), frames.video_height, frames.video_width) == (3, height, width) == (3, 48, 64)
        for t in range(3):
            assert torch.equal(frames[t], expected[t]), (source, t)


# ---- the quickstart chain into SAM 2 ------------------------------------------------------------------


@pytest.mark.slow  # about a minute: a 2-step quickstart fit of a Hiera-T MAE, its export, two CLI runs
def test_quickstart_abs_win_export_runs_both_predictors_through_the_cli(tmp_path):
    """``unveil fit --config quickstart --config presets/abswin`` at Hiera-T's width and depth (the
    quickstart's own Hiera is narrower than any SAM 2 trunk), ``unveil export --format sam2``, then
    ``unveil segment image|video --trunk`` with the export and with the ``.ckpt``: the trunk of
    ``sam2_hiera_tiny`` holds the pretrained weights and both predictors run."""
    from PIL import Image

    from unveil.launch.segment import load_model

    env = {**os.environ, "WANDB_MODE": "disabled"}

    def unveil(*args):
        result = subprocess.run([_unveil(), *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900, check=False)
        assert result.returncode == 0, f"unveil {' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result

    unveil("synth", "images", "--out", "data/shapes", "--num_classes", "2", "--train_per_class", "4",
           "--val_per_class", "2", "--size", "64", "--progress", "false")
    hiera_t = "--model.init_args.model.init_args."
    unveil("fit", "--config", "quickstart", "--config", "presets/abswin", "--trainer.max_steps", "2",
           "--trainer.val_check_interval", "2", "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
           "--data.init_args.input_size", "64", f"{hiera_t}input_size=[64,64]", f"{hiera_t}embed_dim=96",
           f"{hiera_t}num_heads=1", f"{hiera_t}stages=[1,2,7,2]", "--model.init_args.log_images_every_n_steps", "0")
    (ckpt,) = (tmp_path / "runs/quickstart").glob("version_*/checkpoints/last.ckpt")
    unveil("export", str(ckpt), "--format", "sam2", "--out", "trunk_sam2.pt")

    pretrained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for source in (tmp_path / "trunk_sam2.pt", ckpt):
        model = load_model(None, str(source), None, "cpu", image_size=256)
        assert model.config.trunk == "tiny"
        for key, value in model.image_encoder.trunk.state_dict().items():
            assert torch.equal(value, pretrained[f"model.{key}"]), (source, key)

    image = (np.random.default_rng(4).random((120, 160, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = unveil("segment", "image", "photo.png", "--point", "80,60", "--trunk", "trunk_sam2.pt", "--image-size", "256",
                 "--out", "mask.png")
    assert "new (untrained)" in out.stderr and np.array(Image.open(tmp_path / "mask.png")).shape == (120, 160, 3)
    write_frames(tmp_path / "clip", count=3, size=(96, 128))
    unveil("segment", "video", "clip", "--point", "1,40,50", "--trunk", str(ckpt), "--image-size", "256", "--out", "overlays")
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["00000.png", "00001.png", "00002.png"]
