"""``unveil export``: real checkpoints from tiny fits (an absolute-win image MAE, a video MAE, MAViL) exported
in every format and loaded into the target implementations: timm (``Hiera``, ``hieradet_sam2``,
``VisionTransformer``) and the official ``hiera`` package (hiera-transformer), outputs compared with the
source model's backbone in fp32 (max abs diff <= 1e-4). Also: the report of dropped keys, the safetensors
metadata, the architecture recorded in checkpoints and the config.yaml fallback, and the one-line errors
(wrong kind of checkpoint, mismatched architecture, pickled objects)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from safetensors import safe_open
from timm.models.hieradet_sam2 import HieraDet as TimmHieraDet
from timm.models.hieradet_sam2 import checkpoint_filter_fn as sam2_filter
from tiny_configs import TINY_MAVIL as MAVIL
from torch.utils.data import DataLoader, Dataset
from unveil.common.checkpoints import ARCHITECTURE_KEY, build_backbone, load_backbone
from unveil.launch.cli import main
from unveil.launch.export_targets import official_hiera_spec, timm_hiera_spec, timm_vit_spec
from unveil.models import MaskedAutoencoderHiera
from unveil.models.convert import hiera_backbone_config, official_to_timm
from unveil.models.hiera import Hiera, hiera_tiny_224
from unveil.models.mavil import MAViL, VideoEncoder, mavil_encoder_to_timm
from unveil.pretrain import MAEPretrainModule, MAViLPretrainModule

with warnings.catch_warnings():  # hiera-transformer imports timm.models.layers (deprecated)
    warnings.simplefilter("ignore", FutureWarning)
    import hiera as official  # noqa: F401  (imported by the specs' build(); fail early if missing)

TOL = 1e-4
TINY = dict(
    embed_dim=32, num_heads=1, stages=(1, 1, 1, 1), decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1
)
# 64 px → a 16x16 token grid, 2x2 mask units; the background table is resampled 4x4 → 16x16
IMAGE = dict(input_size=(64, 64), abs_win_pos_embed=True, global_pos_size=(4, 4), **TINY)
VIDEO = dict(
    input_size=(4, 64, 64),
    q_stride=(1, 2, 2),
    mask_unit_size=(1, 8, 8),
    patch_kernel=(3, 7, 7),
    patch_stride=(2, 4, 4),
    patch_padding=(1, 3, 3),
    sep_pos_embed=True,
    mask_ratio=0.75,
    **TINY,
)


# --------------------------------------------------------------------------------------------------- helpers


class Samples(Dataset):
    """Random tensors under fixed keys (shapes given per key)."""

    def __init__(self, count: int, **shapes):
        self.count, self.shapes = count, shapes

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        return {key: torch.randn(*shape, generator=g) for key, shape in self.shapes.items()}


@torch.no_grad()
def perturbed(model: torch.nn.Module, vectors_only: bool = False) -> torch.nn.Module:
    """Move parameters off their initial values (LayerNorm gains, zero biases), so that a wrongly mapped key
    cannot hide behind an initialisation; ``vectors_only``: only the 1-D ones (matrices start random)."""
    for p in model.parameters():
        if p.dim() <= 1 or not vectors_only:
            p.add_(torch.randn_like(p) * 0.02)
    return model


def fit_checkpoint(module: pl.LightningModule, data: Dataset, root: Path) -> Path:
    """One optimiser step; Lightning's ModelCheckpoint writes ROOT/checkpoints/*.ckpt."""
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    trainer.fit(module, DataLoader(data, batch_size=2))
    (checkpoint,) = (root / "checkpoints").glob("*.ckpt")
    return checkpoint


def source_model(checkpoint: Path, cls, config: dict) -> torch.nn.Module:
    """The pretrained model as the checkpoint holds it (the reference every export is compared with)."""
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    model = cls(**config)
    model.load_state_dict({k[len("model.") :]: v for k, v in state.items()})
    return model.eval()


def export(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["export", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("unveil: error: "), err
    return lines[0]


def max_diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max(max_diff(x, y) for x, y in zip(a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def stage_maps(model, x: torch.Tensor, fmt: str = "NCHW") -> list[torch.Tensor]:
    with torch.no_grad():
        return model.forward_intermediates(x, output_fmt=fmt, intermediates_only=True)


# ----------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    torch.manual_seed(0)
    model = perturbed(MaskedAutoencoderHiera(**IMAGE))
    module = MAEPretrainModule(model, optimizer={"lr": 1e-3, "warmup_steps": 0}, pictures={"every_n_steps": 0})
    checkpoint = fit_checkpoint(module, Samples(4, image=(3, 64, 64)), tmp_path_factory.mktemp("image_run"))
    return checkpoint, source_model(checkpoint, MaskedAutoencoderHiera, IMAGE)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    torch.manual_seed(1)
    model = perturbed(MaskedAutoencoderHiera(**VIDEO))
    module = MAEPretrainModule(model, optimizer={"lr": 1e-3, "warmup_steps": 0}, pictures={"every_n_steps": 0})
    checkpoint = fit_checkpoint(
        module, Samples(4, video=(3, 4, 64, 64)), tmp_path_factory.mktemp("video_run")
    )
    return checkpoint, source_model(checkpoint, MaskedAutoencoderHiera, VIDEO)


@pytest.fixture(scope="module")
def mavil_run(tmp_path_factory):
    torch.manual_seed(2)
    module = MAViLPretrainModule(
        perturbed(MAViL(**MAVIL)), optimizer={"lr": 1e-3, "warmup_steps": 0}, pictures={"every_n_steps": 0}
    )
    data = Samples(4, fbank=(1, 64, 128), video=(3, 4, 32, 32))
    checkpoint = fit_checkpoint(module, data, tmp_path_factory.mktemp("mavil_run"))
    return checkpoint, source_model(checkpoint, MAViL, MAVIL)


def test_checkpoints_record_the_architecture_and_load_weights_only(image_run, mavil_run):
    for (checkpoint, model), cls in (
        (image_run, "unveil.models.mae.MaskedAutoencoderHiera"),
        (mavil_run, "unveil.models.mavil.MAViL"),
    ):
        saved = torch.load(checkpoint, weights_only=True)  # a Lightning 2.6 checkpoint needs no pickled code
        record = saved[ARCHITECTURE_KEY]
        assert record["class_path"] == cls
        assert json.loads(json.dumps(record["init_args"])) == record["init_args"]  # plain values only
        rebuilt = type(model)(**record["init_args"])
        assert rebuilt.config == model.config


# ------------------------------------------------------------------------------------------------- image MAE


def test_image_unveil_and_safetensors(image_run, tmp_path, capsys):
    checkpoint, source = image_run
    code, out, err = export(capsys, checkpoint, "--format", "unveil", "--out", tmp_path / "backbone.pth")
    assert code == 0, err
    assert "architecture: unveil.models.mae.MaskedAutoencoderHiera from the checkpoint" in out
    # the report names every dropped module of the MAE, under the checkpoint's 'model.' prefix
    for part in (
        "model.mask_token",
        "model.decoder_blocks.*",
        "model.multi_scale_fusion_heads.*",
        "model.encoder_norm.*",
        "model.decoder_pred.*",
    ):
        assert part in out, part
    saved = torch.load(tmp_path / "backbone.pth", weights_only=True)
    assert saved["format"] == "unveil-backbone" and saved["class_path"] == "unveil.models.hiera.Hiera"
    assert saved["config"] == json.loads(json.dumps(hiera_backbone_config(source.config)))
    assert not any(
        k.startswith(("decoder", "mask_token", "encoder_norm", "multi_scale")) for k in saved["model_state"]
    )

    backbone = build_backbone(tmp_path / "backbone.pth").eval()
    assert type(backbone) is Hiera and backbone.q_pool == source.q_pool
    x = torch.randn(2, 3, 64, 64)
    assert max_diff(stage_maps(backbone, x), stage_maps(source, x)) <= TOL

    code, _, err = export(
        capsys, checkpoint, "--format", "safetensors", "--out", tmp_path / "backbone.safetensors"
    )
    assert code == 0, err
    with safe_open(str(tmp_path / "backbone.safetensors"), "pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    assert metadata["format"] == "unveil-backbone" and metadata["class_path"] == "unveil.models.hiera.Hiera"
    assert json.loads(metadata["config"]) == saved["config"]
    assert json.loads(metadata["source"])["checkpoint"] == str(checkpoint)
    assert tensors.keys() == saved["model_state"].keys()
    assert all(torch.equal(tensors[k], v) for k, v in saved["model_state"].items())
    state, architecture = load_backbone(tmp_path / "backbone.safetensors")
    assert architecture.init_args == saved["config"] and state.keys() == tensors.keys()


def test_image_timm_matches_and_warns_about_antialias(image_run, tmp_path, capsys):
    checkpoint, source = image_run
    code, out, err = export(capsys, checkpoint, "--format", "timm", "--out", tmp_path / "timm.pth")
    assert code == 0, err
    spec = timm_hiera_spec(hiera_backbone_config(source.config))
    assert spec.code() in out  # what the command tells the user to build is what is tested here
    ref = spec.build().eval()
    missing, unexpected = ref.load_state_dict(
        torch.load(tmp_path / "timm.pth", weights_only=True), strict=False
    )
    assert not unexpected and set(missing) == {"head.norm.weight", "head.norm.bias"}  # MAE has no final norm

    # timm resamples the absolute-win background with antialias=True (the command says so): the same function
    # as a unveil Hiera with pos_embed_antialias=True and these weights, and measurably not the source's
    assert "antialias=True" in out
    x = torch.randn(2, 3, 64, 64)
    antialiased = Hiera(**{**hiera_backbone_config(source.config), "pos_embed_antialias": True}).eval()
    antialiased.load_state_dict(source.state_dict(), strict=False)
    assert max_diff(stage_maps(ref, x), stage_maps(antialiased, x)) <= TOL
    assert max_diff(stage_maps(ref, x), stage_maps(source, x)) > 1e-3

    # --encoder-norm-as-norm keeps the MAE's encoder_norm as timm's head.norm (what timm's own filter does):
    # with num_classes=0 the file then loads strictly
    code, out, err = export(
        capsys, checkpoint, "--format", "timm", "--encoder-norm-as-norm", "--out", tmp_path / "with_norm.pth"
    )
    assert code == 0, err
    ref = spec.build()
    ref.load_state_dict(torch.load(tmp_path / "with_norm.pth", weights_only=True), strict=True)
    assert torch.equal(ref.head.norm.weight, source.encoder_norm.weight)


def test_image_sam2_trunk_matches_timm_hieradet(image_run, tmp_path, capsys):
    checkpoint, source = image_run
    code, out, err = export(capsys, checkpoint, "--format", "sam2", "--out", tmp_path / "sam2.pt")
    assert code == 0, err
    saved = torch.load(tmp_path / "sam2.pt", weights_only=True)
    assert saved.keys() == {"model"} and all(k.startswith("image_encoder.trunk.") for k in saved["model"])
    assert "image_encoder.trunk.pos_embed_window" in saved["model"]
    assert "image_encoder.trunk.blocks.0.mlp.layers.0.weight" in saved["model"]
    assert "timm.models.hieradet_sam2.HieraDet(" in out and "sam2.modeling.backbones.hieradet.Hiera(" in out

    # timm's own SAM 2 filter reads the file; at 64 px these windows make HieraDet the MAE encoder's function
    ref = TimmHieraDet(
        embed_dim=32,
        num_heads=1,
        stages=(1, 1, 1, 1),
        q_pool=source.q_pool,
        global_pos_size=(4, 4),
        window_spec=(8, 4, 4, 4),
        global_att_blocks=(),
        num_classes=0,
    ).eval()
    missing, unexpected = ref.load_state_dict(sam2_filter(saved, prefix="image_encoder.trunk."), strict=False)
    assert not unexpected and set(missing) == {"head.norm.weight", "head.norm.bias"}
    x = torch.randn(2, 3, 64, 64)
    assert max_diff(stage_maps(ref, x), stage_maps(source, x)) <= TOL


def test_official_hiera_refuses_abs_win(image_run, tmp_path, capsys):
    checkpoint, _ = image_run
    code, _, err = export(capsys, checkpoint, "--format", "hiera", "--out", tmp_path / "official.pth")
    assert code == 2 and "absolute-win" in error_line(err)
    assert not (tmp_path / "official.pth").exists()


def test_reexport_of_an_export(image_run, tmp_path, capsys):
    """An unveil export carries its architecture: it converts onwards with no flags."""
    checkpoint, _ = image_run
    assert export(capsys, checkpoint, "--format", "unveil", "--out", tmp_path / "a.pth")[0] == 0
    assert export(capsys, checkpoint, "--format", "sam2", "--out", tmp_path / "direct.pt")[0] == 0
    code, out, err = export(capsys, tmp_path / "a.pth", "--format", "sam2", "--out", tmp_path / "again.pt")
    assert code == 0, err and "architecture: unveil.models.hiera.Hiera" in out
    direct, again = (torch.load(tmp_path / n, weights_only=True)["model"] for n in ("direct.pt", "again.pt"))
    assert direct.keys() == again.keys() and all(torch.equal(direct[k], again[k]) for k in direct)


# ------------------------------------------------------------------------------------------------- video MAE


def test_video_official_hiera_and_timm(video_run, tmp_path, capsys):
    checkpoint, source = video_run
    config = hiera_backbone_config(source.config)
    x = torch.randn(1, 3, 4, 64, 64)
    expected = stage_maps(source, x, fmt="NHWC")  # [B, T, H, W, C] per stage

    code, out, err = export(capsys, checkpoint, "--format", "hiera", "--out", tmp_path / "official.pth")
    assert code == 0, err
    spec = official_hiera_spec(config)
    assert spec.code() in out and spec.builder == "hiera.Hiera"
    ref = spec.build().eval()
    saved = torch.load(tmp_path / "official.pth", weights_only=True)
    missing, unexpected = ref.load_state_dict(saved["model_state"], strict=False)
    assert not unexpected and set(missing) == {
        "norm.weight",
        "norm.bias",
        "head.projection.weight",
        "head.projection.bias",
    }
    with torch.no_grad():
        _, maps = ref(x, return_intermediates=True)
    assert max_diff(maps, expected) <= TOL

    code, out, err = export(capsys, checkpoint, "--format", "timm", "--out", tmp_path / "timm.pth")
    assert code == 0, err
    spec = timm_hiera_spec(config)
    assert spec.code() in out and spec.builder == "timm.models.hiera.Hiera"  # timm registers no video Hiera
    ref = spec.build().eval()
    missing, unexpected = ref.load_state_dict(
        torch.load(tmp_path / "timm.pth", weights_only=True), strict=False
    )
    assert not unexpected and set(missing) == {"head.norm.weight", "head.norm.bias"}
    assert max_diff(stage_maps(ref, x, fmt="NHWC"), expected) <= TOL

    code, _, err = export(capsys, checkpoint, "--format", "sam2", "--out", tmp_path / "sam2.pt")
    assert code == 2 and "absolute-win" in error_line(err)


# ----------------------------------------------------------------------------------------------------- MAViL


def test_mavil_encoders_match_timm_vit(mavil_run, tmp_path, capsys):
    checkpoint, source = mavil_run
    code, out, err = export(capsys, checkpoint, "--format", "timm", "--out", tmp_path / "mavil.pth")
    assert code == 0, err
    for part in (
        "fusion encoder",
        "model.fusion_blocks.*",
        "model.audio_decoder.*",
        "model.video_decoder.*",
        "model.audio_projection.*",
        "model.video_projection.*",
    ):
        assert part in out, part
    inputs = {"audio": torch.randn(2, 1, 64, 128), "video": torch.randn(2, 3, 4, 32, 32)}
    for modality, x in inputs.items():
        path = tmp_path / f"mavil.{modality}.pth"
        spec = timm_vit_spec(mavil_encoder_to_timm(source, modality)[1])
        assert spec.code() in out
        vit = spec.build().eval()
        vit.load_state_dict(torch.load(path, weights_only=True), strict=True)
        with torch.no_grad():
            diff = max_diff(
                vit.forward_features(x), getattr(source, f"{modality}_encoder").forward_features(x)
            )
        assert diff <= TOL, modality

    code, out, err = export(
        capsys, checkpoint, "--format", "unveil", "--encoder", "video", "--out", tmp_path / "video.pth"
    )
    assert code == 0, err and "video encoder (not selected)" not in out
    assert "audio encoder (not selected): model.audio_encoder.*" in out
    encoder = build_backbone(tmp_path / "video.pth").eval()
    assert type(encoder) is VideoEncoder
    with torch.no_grad():
        assert max_diff(encoder(inputs["video"]), source.video_encoder(inputs["video"])) <= TOL

    code, _, err = export(capsys, checkpoint, "--format", "sam2", "--out", tmp_path / "x.pt")
    assert code == 2 and "not a Hiera" in error_line(err)


# --------------------------------------------------------------------------------------------- architectures


def checkpoint_without_record(checkpoint: Path, run: Path) -> Path:
    """The checkpoint as an older run would have saved it (no architecture), in a LightningCLI run layout."""
    saved = torch.load(checkpoint, weights_only=True)
    del saved[ARCHITECTURE_KEY]
    path = run / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    return path


def write_run_config(run: Path, **model_args) -> Path:
    """A config.yaml as LightningCLI writes it into the log folder (the parts export reads)."""
    config = {
        "model": {
            "class_path": "unveil.pretrain.MAEPretrainModule",
            "init_args": {
                "optimizer": {"lr": 1e-3},
                "model": {
                    "class_path": "unveil.models.MaskedAutoencoderHiera",
                    "init_args": json.loads(json.dumps(model_args)),
                },
            },
        }
    }
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_yaml_fallback(image_run, tmp_path, capsys):
    checkpoint, source = image_run
    old = checkpoint_without_record(checkpoint, tmp_path / "run")

    code, out, err = export(capsys, old, "--format", "unveil", "--out", tmp_path / "a.pth")
    assert code == 2 and "records no architecture" in error_line(err) and "--config" in err
    code, out, err = export(capsys, old, "--format", "timm", "--out", tmp_path / "a_timm.pth")  # keys only
    assert code == 0, err and "records no architecture" in out

    config = write_run_config(tmp_path / "run", **IMAGE)
    code, out, err = export(capsys, old, "--format", "unveil", "--out", tmp_path / "a.pth")
    assert code == 0, err
    assert f"from '{config}'" in out
    assert torch.load(tmp_path / "a.pth", weights_only=True)["config"] == json.loads(
        json.dumps(hiera_backbone_config(source.config))
    )


def test_mismatched_architecture_lists_keys(image_run, tmp_path, capsys):
    checkpoint, _ = image_run
    old = checkpoint_without_record(checkpoint, tmp_path / "run")

    # --config takes a recipe too: the quickstart's Hiera-T is not this checkpoint's model
    code, _, err = export(
        capsys, old, "--format", "timm", "--config", "quickstart", "--out", tmp_path / "a.pth"
    )
    line = error_line(err)
    assert code == 2 and "quickstart.yaml' (MaskedAutoencoderHiera): " in line and "shape mismatches" in line

    write_run_config(tmp_path / "run", **{**IMAGE, "embed_dim": 48})
    code, _, err = export(capsys, old, "--format", "timm", "--out", tmp_path / "a.pth")
    line = error_line(err)
    assert code == 2 and "does not match the architecture from" in line and "config.yaml" in line
    assert "shape mismatches: pos_embed [1, 32, 4, 4] vs [1, 48, 4, 4]" in line
    assert "patch_embed.proj.weight [32, 3, 7, 7] vs [48, 3, 7, 7]" in line
    assert "more)" in line  # long lists are cut, with a count

    write_run_config(tmp_path / "run", **{**IMAGE, "stages": (1, 1, 2, 1)})
    code, _, err = export(capsys, old, "--format", "timm", "--out", tmp_path / "a.pth")
    line = error_line(err)
    assert (
        code == 2 and "missing keys: blocks.4.norm1.weight" in line and "shape mismatches: blocks.3." in line
    )
    assert not (tmp_path / "a.pth").exists()

    # the record inside a checkpoint is checked the same way
    saved = torch.load(checkpoint, weights_only=True)
    saved[ARCHITECTURE_KEY]["init_args"]["decoder_depth"] = 2
    torch.save(saved, tmp_path / "tampered.ckpt")
    code, _, err = export(capsys, tmp_path / "tampered.ckpt", "--format", "timm", "--out", tmp_path / "b.pth")
    line = error_line(err)
    assert (
        code == 2 and "from the checkpoint" in line and "missing keys: decoder_blocks.1.norm1.weight" in line
    )


def test_model_flag_for_a_timm_state_dict(tmp_path, capsys):
    """A file with no architecture (here timm-named Hiera-T weights) exports with --model."""
    model = perturbed(hiera_tiny_224(), vectors_only=True).eval()
    torch.save(official_to_timm(model.state_dict())[0], tmp_path / "timm_hiera_t.pth")
    code, out, err = export(
        capsys,
        tmp_path / "timm_hiera_t.pth",
        "--format",
        "unveil",
        "--keep-head",
        "--model",
        "hiera_tiny_224",
        "--out",
        tmp_path / "t.pth",
    )
    assert code == 0, err and "from --model hiera_tiny_224" in out
    backbone = build_backbone(tmp_path / "t.pth").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert max_diff(backbone(x), model(x)) <= TOL  # norm and classifier kept with --keep-head


# -------------------------------------------------------------------------------------------------- refusals


class NotAWeight:
    """A custom class: pickling an instance stores a reference to code, which weights_only loading refuses."""


def test_pickled_objects_are_refused(image_run, tmp_path, capsys):
    checkpoint, _ = image_run
    saved = torch.load(checkpoint, weights_only=True)
    saved["callbacks"] = {"custom": NotAWeight()}
    torch.save(saved, tmp_path / "unsafe.ckpt")
    code, _, err = export(capsys, tmp_path / "unsafe.ckpt", "--format", "timm", "--out", tmp_path / "a.pth")
    line = error_line(err)
    assert code == 2 and "refusing to load" in line and "NotAWeight" in line and "weights_only=True" in line
    assert not (tmp_path / "a.pth").exists()


def test_wrong_kind_of_checkpoint(tmp_path, capsys):
    lightning = {"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.6.0"}
    torch.save({**lightning, "state_dict": {"net.weight": torch.zeros(2, 2)}}, tmp_path / "other.ckpt")
    code, _, err = export(capsys, tmp_path / "other.ckpt", "--format", "timm", "--out", tmp_path / "a.pth")
    line = error_line(err)
    assert code == 2 and "no 'model.*' keys" in line and "net.weight" in line and "MAEPretrainModule" in line

    torch.save({**lightning, "state_dict": {"model.fc.weight": torch.zeros(2, 2)}}, tmp_path / "other2.ckpt")
    code, _, err = export(capsys, tmp_path / "other2.ckpt", "--format", "timm", "--out", tmp_path / "a.pth")
    assert code == 2 and "not a Hiera, MAE-Hiera or MAViL checkpoint" in error_line(err)

    (tmp_path / "notes.txt").write_text("not a checkpoint")
    code, _, err = export(capsys, tmp_path / "notes.txt", "--format", "timm", "--out", tmp_path / "a.pth")
    assert code == 2 and "not a torch checkpoint" in error_line(err)


def test_command_line_mistakes(image_run, tmp_path, capsys):
    checkpoint, _ = image_run
    code, _, err = export(capsys, checkpoint, "--format", "onnx", "--out", tmp_path / "a")
    assert code == 2 and "invalid choice: 'onnx'" in error_line(err)
    code, _, err = export(capsys, checkpoint, "--format", "timm")
    assert code == 2 and "--out" in error_line(err)
    code, _, err = export(
        capsys, checkpoint, "--format", "timm", "--encoder", "audio", "--out", tmp_path / "a"
    )
    assert code == 2 and "--encoder applies to MAViL" in error_line(err)
    code, _, err = export(capsys, tmp_path / "missing.ckpt", "--format", "timm", "--out", tmp_path / "a")
    assert code == 2 and "not found" in error_line(err)
    shutil.copy(checkpoint, tmp_path / "same.ckpt")
    code, _, err = export(capsys, tmp_path / "same.ckpt", "--format", "timm", "--out", tmp_path / "same.ckpt")
    assert code == 2 and "is the checkpoint itself" in error_line(err)


# ------------------------------------------------------------------------------------------------- from memory


@pytest.mark.parametrize("fmt", ["unveil", "hiera", "timm", "sam2", "safetensors"])
def test_export_backbone_from_memory_writes_what_the_command_writes(image_run, tmp_path, capsys, fmt):
    """``export_backbone(model, format, out)`` (the ExportBackbone callback's path, no checkpoint file) writes
    the same tensors as ``unveil export`` of the model's checkpoint."""
    from unveil.common.checkpoints import load_checkpoint_state
    from unveil.launch.export import export_backbone

    checkpoint, source = image_run
    code, _, err = export(capsys, checkpoint, "--format", fmt, "--out", tmp_path / "cli.pt")
    if fmt == "hiera":  # absolute-win: the official package cannot take it, from a file or from memory
        assert code == 2 and "absolute-win" in error_line(err)
        with pytest.raises(ValueError, match="absolute-win"):
            export_backbone(source, fmt, tmp_path / "memory.pt")
        return
    assert code == 0, err
    (written,) = export_backbone(source, fmt, tmp_path / "memory.pt")
    from_file, from_memory = load_checkpoint_state(tmp_path / "cli.pt"), load_checkpoint_state(written)
    assert from_file.keys() == from_memory.keys()
    assert all(torch.equal(from_file[k], from_memory[k]) for k in from_file)


def test_export_backbone_from_memory_mavil_and_refusals(mavil_run, tmp_path, capsys):
    from unveil.launch.export import export_backbone

    _, source = mavil_run
    written = export_backbone(source, "timm", tmp_path / "mavil.pth")
    assert [p.name for p in written] == ["mavil.audio.pth", "mavil.video.pth"]
    audio = torch.load(written[0], weights_only=True)
    assert all(torch.equal(v, source.audio_encoder.state_dict()[k]) for k, v in audio.items())
    with pytest.raises(ValueError, match="does not record its constructor arguments"):
        export_backbone(torch.nn.Linear(2, 2), "timm", tmp_path / "x.pth")
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        export_backbone(source, "onnx", tmp_path / "x.onnx")
