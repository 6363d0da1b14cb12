"""Weights & Biases logging with no account: tiny MAE fits through ``unveil fit`` with the paper recipes' logger and
checkpoint settings, WANDB_MODE=offline (tests/conftest.py), each offline run read back from its transaction log.

The reference for every check is what the run itself produced elsewhere: the losses the module passed to
``self.log`` (recorded by a spy), the ``config.yaml`` LightningCLI wrote, the PNG pictures in the run folder. The
reader is wandb's own: wandb 0.31 has no Python reader of ``run-*.wandb`` any more (``wandb.sdk.internal.datastore``
is gone); ``wandb leet inspect --json`` (wandb-core) prints one JSON record per line.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported here so its log handler binds pytest's stderr, not a test's)
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from unveil.launch.cli import main, parse_recipe
from unveil.launch.recipes import recipes_dir
from unveil.launch.run_defaults import run_defaults
from unveil.pretrain import MAEPretrainModule
from unveil.pretrain.visualize import grid_pixels, send_to_loggers

PAPER = "mae_hiera_t_in1k"  # the logger and checkpoint blocks under test come from this recipe
RUN_ID = "unveiltest01"
TINY = [
    "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "2",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--data.init_args.root", "data/shapes", "--data.init_args.input_size", "64", "--data.init_args.batch_size", "2",
    "--data.init_args.loader.num_workers", "0",
    "--model.init_args.pictures.every_n_steps", "2", "--model.init_args.pictures.num_samples", "1",
    "--model.init_args.model.init_args.input_size", "[64, 64]", "--model.init_args.model.init_args.stages", "[1, 1, 1, 1]",
    "--model.init_args.model.init_args.embed_dim", "32", "--model.init_args.model.init_args.decoder_embed_dim", "32",
    "--model.init_args.model.init_args.decoder_depth", "1", "--model.init_args.model.init_args.decoder_num_heads", "1",
]


# ------------------------------------------------------------------------------------------------------ helpers


def read_records(wandb_file: Path) -> list[dict]:
    """Every record of an offline run's ``run-*.wandb`` log, as wandb's reader prints them."""
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_file)],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert records and records[0]["type"] == "header", result.stdout[:500]
    return records


def offline_runs(save_dir: Path) -> list[Path]:
    """The ``offline-run-*`` folders under a WandbLogger's save_dir, oldest first (their names start with the time)."""
    return sorted((save_dir / "wandb").glob("offline-run-*"))


def history(records: list[dict]) -> list[dict]:
    return [record["history"]["item"] for record in records if record["type"] == "history"]


def config_of(records: list[dict]) -> dict:
    """The run config: the run record's, updated by every config record in order (as W&B merges them)."""
    config = {}
    for record in records:
        if record["type"] in ("run", "config"):
            config.update(record[record["type"]]["config"]["update"] if record["type"] == "run"
                          else record["config"]["update"])
    return config


def recipe_with_paper_logging(folder: Path, every_n_train_steps: int | None = None) -> Path:
    """quickstart.yaml (CPU, small) with the run folder, logger and callbacks of the paper recipe PAPER;
    ``every_n_train_steps`` replaces the periodic checkpoint's 1000 steps."""
    def block(text: str) -> str:
        start, end = text.index("\n  logger:"), text.index("\nmodel:")
        return text[start:end]

    quick = (recipes_dir() / "quickstart.yaml").read_text()
    # the paper recipes take their logger and callbacks from unveil.launch.run_defaults
    plumbing = run_defaults(recipes_dir() / f"{PAPER}.yaml")
    if every_n_train_steps is not None:
        (periodic,) = [c for c in plumbing["callbacks"] if c["class_path"].endswith("PeriodicCheckpoint")]
        assert periodic["init_args"]["every_n_train_steps"] == 1000
        periodic["init_args"]["every_n_train_steps"] = every_n_train_steps
    paper = "\n" + textwrap.indent(yaml.safe_dump({key: plumbing[key] for key in ("logger", "callbacks")},
                                                   sort_keys=False), "  ").rstrip("\n")
    assert "WandbLogger" in paper and "TensorBoardLogger" in block(quick)
    path = folder / "quickstart_wandb.yaml"
    assert quick.count("default_root_dir: runs/quickstart\n") == 1
    quick = quick.replace("default_root_dir: runs/quickstart\n", f"default_root_dir: runs/{PAPER}\n")
    path.write_text(quick.replace(block(quick), paper))
    return path


class Spy:
    """Records what the module logged (``train/loss`` per global step) and the arguments of ``wandb.init``; with
    ``crash_at``, the training step at that global step raises, as a preempted or crashed job would stop."""

    def __init__(self, monkeypatch, crash_at: int | None = None):
        import wandb
        from lightning.pytorch import LightningModule

        self.losses: dict[int, float] = {}
        self.init_kwargs: list[dict] = []
        original_init, original_step = wandb.init, MAEPretrainModule.training_step

        def log(module, name, value, *args, **kwargs):
            if name == "train/loss":
                self.losses[module.global_step] = float(value.detach())
            return LightningModule.log(module, name, value, *args, **kwargs)

        def training_step(module, *args, **kwargs):
            if module.global_step == crash_at:
                raise SimulatedCrash(f"stopped at step {crash_at}")
            return original_step(module, *args, **kwargs)

        @functools.wraps(original_init)  # jsonargparse reads wandb.init's signature for WandbLogger's **kwargs
        def init(*args, **kwargs):
            self.init_kwargs.append(kwargs)
            return original_init(*args, **kwargs)

        monkeypatch.setattr(MAEPretrainModule, "log", log)
        monkeypatch.setattr(MAEPretrainModule, "training_step", training_step)
        monkeypatch.setattr(wandb, "init", init)


class SimulatedCrash(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------- one run, resumed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A fit with a fixed W&B id stopped by an error at step 5 (last.ckpt at step 4), then resumed with
    ``--ckpt_path last`` and the same id to step 6. The recipe's periodic checkpoint runs every 2 steps here."""
    from unveil.datasets.synth import make_image_folder

    folder = tmp_path_factory.mktemp("wandb_runs")
    make_image_folder(folder / "data/shapes", num_classes=2, train_per_class=2, val_per_class=1, size=64,
                      progress=False)
    recipe = recipe_with_paper_logging(folder, every_n_train_steps=2)
    command = ["fit", "--config", str(recipe), *TINY, "--trainer.max_steps", "6",
               "--trainer.logger.init_args.id", RUN_ID]
    parts = []
    for crash_at, extra in ((5, []), (None, ["--ckpt_path", "last"])):
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.chdir(folder)
            spy = Spy(monkeypatch, crash_at=crash_at)
            if crash_at is None:
                assert main(command + extra) == 0
            else:
                with pytest.raises(SimulatedCrash):
                    main(command + extra)
            parts.append(spy)
        # W&B names an offline folder offline-run-<second>-<id>: the resumed part must start in another second
        while crash_at and time.strftime("%Y%m%d_%H%M%S") in str(offline_runs(folder / "runs" / PAPER)):
            time.sleep(0.1)
    run_dir = folder / "runs" / PAPER
    offline = offline_runs(run_dir)
    assert len(offline) == 2, offline  # one offline folder per process; both carry the same run id
    return {"folder": run_dir, "spies": parts, "offline": offline,
            "records": [read_records(next(path.glob("run-*.wandb"))) for path in offline]}


def test_logged_losses_are_in_the_offline_run(runs):
    """train/loss at every step, equal to the value the module logged at that step, in both parts of the run, with
    the module's samples/s and W&B's own system metrics; the crashed part is closed with exit code 1, the finished
    one with 0 (the CLI closes the W&B runs it started)."""
    for spy, records, steps, exit_code in zip(runs["spies"], runs["records"], (range(5), range(4, 6)), (1, 0)):
        rows = [row for row in history(records) if "train/loss" in row]
        on_disk = {row["trainer/global_step"]: row["train/loss"] for row in rows}
        assert sorted(on_disk) == list(steps)
        assert on_disk == spy.losses  # exact: float32 values survive the JSON round trip
        assert all(row["train/samples_per_sec"] > 0 for row in rows[1:])
        assert any("val/loss" in row for row in history(records))
        assert any(record["type"] == "stats" and "proc.memory.rssMB" in record["stats"]["item"] for record in records)
        assert records[-1]["type"] == "exit" and records[-1]["exit"]["exit_code"] == exit_code


def test_resolved_config_is_the_run_config(runs):
    """The run config holds the whole resolved config.yaml (trainer, model, data, overrides applied), besides the
    module hyperparameters Lightning logs itself."""
    saved = yaml.safe_load((runs["folder"] / "config.yaml").read_text())  # written by the second part
    config = config_of(runs["records"][1])
    for key in ("seed_everything", "trainer", "model", "data", "ckpt_path"):
        assert config[key] == saved[key], key
    assert config["trainer"]["max_steps"] == 6 and config["ckpt_path"] == "last"
    assert config["model"]["init_args"]["model"]["init_args"]["embed_dim"] == 32
    assert config["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.WandbLogger"
    assert config["trainer"]["logger"]["init_args"]["id"] == RUN_ID
    # Lightning's own hparams are still there (the option groups as mappings)
    assert config["optimizer"]["base_lr"] == saved["model"]["init_args"]["optimizer"]["base_lr"]
    assert config["loader"]["num_workers"] == saved["data"]["init_args"]["loader"]["num_workers"]
    first = config_of(runs["records"][0])
    assert first["ckpt_path"] is None and first["trainer"] == saved["trainer"]


def test_reconstruction_pictures_are_media_of_the_run(runs):
    """Pictures at the steps the module draws them (every 2 steps; the resumed part draws no new step-0 picture),
    each a PNG among the run's files, equal pixel for pixel to the PNG of that step in the run folder."""
    pictures = runs["folder"] / "reconstructions"
    for offline, records, steps in zip(runs["offline"], runs["records"], ([0, 2, 4], [6])):
        rows = [row for row in history(records) if "reconstructions._type" in row]
        assert [row["trainer/global_step"] for row in rows] == steps
        for row in rows:
            assert row["reconstructions.captions"] == ["input | masked | reconstruction | target"]
            (name,) = row["reconstructions.filenames"]
            media = np.asarray(Image.open(offline / "files" / name).convert("RGB"))
            png = np.asarray(Image.open(pictures / f"step_{row['trainer/global_step']:06d}.png").convert("RGB"))
            assert media.shape == png.shape and np.array_equal(media, png)


def test_resumed_run_keeps_the_wandb_id(runs):
    """Both processes asked W&B for the same id with resume='allow' (the recipe states it: the CLI would pass
    resume=None), and the second part's steps continue where last.ckpt stopped."""
    for spy in runs["spies"]:
        (kwargs,) = spy.init_kwargs
        assert kwargs["id"] == RUN_ID and kwargs["resume"] == "allow"
        assert kwargs["project"] == "unveil" and kwargs["group"] == PAPER and kwargs["entity"] is None
    for records in runs["records"]:
        (run,) = [record["run"] for record in records if record["type"] == "run"]
        assert run["run_id"] == RUN_ID and run["run_group"] == PAPER
        assert run["tags"] == ["mae", "hiera-t", "in1k"]
    assert all(path.name.endswith(RUN_ID) for path in runs["offline"])
    assert min(runs["spies"][1].losses) == 4  # resumed from the step-4 checkpoint, not from scratch


def test_checkpoints_last_and_best_in_the_fixed_folder(runs):
    """last.ckpt holds the final step; the best checkpoint is the one after the lowest val/loss W&B recorded."""
    folder = runs["folder"] / "checkpoints"
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 6
    val = [(row["val/loss"], row["trainer/global_step"]) for records in runs["records"] for row in history(records)
           if "val/loss" in row]
    assert len(val) == 3  # after steps 2 and 4 (part 1) and 6 (part 2)
    (best,) = folder.glob("best-*.ckpt")
    assert sorted(path.name for path in folder.iterdir()) == sorted(["last.ckpt", best.name])
    best_state = torch.load(best, map_location="cpu", weights_only=False)
    # Lightning logs a validation at the step count before its batch's increment: val/loss logged at step g-1
    # belongs to the checkpoint written at step g
    assert best_state["global_step"] == min(val)[1] + 1
    assert not list(runs["folder"].glob("unveil/*/checkpoints"))  # not WandbLogger's per-run default folder


# ------------------------------------------------------------------------------------- the one-setting switch


@pytest.mark.parametrize("switch, kept", [("CSVLogger", "version_0/metrics.csv"), ("false", None)])
def test_one_setting_drops_wandb(tmp_path, monkeypatch, switch, kept):
    """--trainer.logger=CSVLogger (or false) on a W&B recipe: no W&B run, CSV metrics with the resolved config as
    hyperparameters, the same checkpoint folder."""
    from unveil.datasets.synth import make_image_folder

    make_image_folder(tmp_path / "data/shapes", num_classes=2, train_per_class=2, val_per_class=1, size=64,
                      progress=False)
    recipe = recipe_with_paper_logging(tmp_path)
    monkeypatch.chdir(tmp_path)
    spy = Spy(monkeypatch)
    assert main(["fit", "--config", str(recipe), *TINY, "--trainer.max_steps", "2", f"--trainer.logger={switch}"]) == 0
    run = tmp_path / "runs" / PAPER
    assert spy.init_kwargs == [] and not (run / "wandb").exists()
    assert (run / "checkpoints/last.ckpt").is_file() and list((run / "checkpoints").glob("best-*.ckpt"))
    if kept is None:
        assert (run / "config.yaml").is_file()  # no logger: the run folder is default_root_dir
        return
    metrics = (run / kept).read_text().splitlines()
    assert "train/loss" in metrics[0] and len(metrics) > 2
    hparams = yaml.safe_load((run / "version_0/hparams.yaml").read_text())
    saved = yaml.safe_load((run / "version_0/config.yaml").read_text())
    assert hparams["trainer"] == saved["trainer"] and hparams["model"] == saved["model"]
    assert saved["trainer"]["logger"] == {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": f"runs/{PAPER}", "name": None, "version": None, "prefix": "",
                      "flush_logs_every_n_steps": 100},
    }


@pytest.mark.parametrize("recipe", [PAPER, "mavil_stage1_as2m"])
def test_logger_switch_keeps_only_what_the_new_logger_takes(recipe):
    """jsonargparse 4.53 carries over the init_args the new class accepts and drops W&B's (project, tags, ...)."""
    wandb = parse_recipe(recipe).trainer.logger
    assert wandb.class_path == "lightning.pytorch.loggers.WandbLogger"
    assert wandb.init_args.save_dir == f"runs/{recipe}" and wandb.init_args.resume == "allow"
    for name in ("CSVLogger", "TensorBoardLogger", "lightning.pytorch.loggers.CSVLogger"):
        logger = parse_recipe(recipe, f"--trainer.logger={name}").trainer.logger
        assert logger.class_path.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]
        assert logger.init_args.save_dir == f"runs/{recipe}" and logger.init_args.name is None
        assert not {"project", "tags", "group", "entity", "resume", "id"} & set(vars(logger.init_args))
    assert parse_recipe(recipe, "--trainer.logger=false").trainer.logger is False


# ------------------------------------------------------------------------------------ pictures of MAViL's tags


def test_send_to_loggers_writes_wandb_media(tmp_path):
    """MAViL's two picture tags through a real offline WandbLogger: one media PNG per tag and step, with the pixels
    of the grid as save_image rounds them, at the trainer step given."""
    from lightning.pytorch.loggers import WandbLogger

    torch.manual_seed(0)
    grids = {"reconstructions/spectrogram": torch.rand(3, 20, 30), "reconstructions/video": torch.rand(3, 16, 24)}
    logger = WandbLogger(save_dir=str(tmp_path), project="unveil")  # offline: WANDB_MODE from conftest.py
    try:
        for step in (0, 5):
            for tag, grid in grids.items():
                send_to_loggers([logger], tag, grid * (step + 1) / 6, step)
    finally:
        logger.experiment.finish()
    (offline,) = offline_runs(tmp_path)
    rows = history(read_records(next(offline.glob("run-*.wandb"))))
    for tag, grid in grids.items():
        tagged = [row for row in rows if f"{tag}._type" in row]
        assert [row["trainer/global_step"] for row in tagged] == [0, 5]
        for row, step in zip(tagged, (0, 5)):
            (name,) = row[f"{tag}.filenames"]
            media = np.asarray(Image.open(offline / "files" / name).convert("RGB"))
            expected = grid_pixels(grid * (step + 1) / 6).permute(1, 2, 0).numpy()
            assert np.array_equal(media, expected)


def test_online_mode_without_an_account_fails_with_one_line(tmp_path, monkeypatch, capsys):
    """W&B online with no API key: one ``unveil: error:`` line naming the ways to run without an account, exit 2,
    before any training step."""
    from unveil.datasets.synth import make_image_folder

    make_image_folder(tmp_path / "data/shapes", num_classes=2, train_per_class=2, val_per_class=1, size=64,
                      progress=False)
    recipe = recipe_with_paper_logging(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings file
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    spy = Spy(monkeypatch)
    code = main(["fit", "--config", str(recipe), *TINY, "--trainer.max_steps", "2",
                 "--trainer.logger.init_args.mode", "online"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("unveil: error:")]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("unveil: error: W&B could not start the run: ") and "WANDB_MODE=offline" in lines[0]
    assert spy.losses == {} and len(spy.init_kwargs) == 1


def test_export_backbone_at_the_end_is_a_wandb_artifact(tmp_path):
    """ExportBackbone writes the final backbone beside the run (every weight equal to the trained encoder's) and
    logs it to the offline W&B run as a model artifact."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import WandbLogger
    from unveil.datasets import ImageDataModule
    from unveil.datasets.synth import make_image_folder
    from unveil.launch.export import ExportBackbone
    from unveil.models import MaskedAutoencoderHiera
    from unveil.pretrain.checkpoints import load_backbone

    images = make_image_folder(tmp_path / "images", num_classes=2, train_per_class=2, val_per_class=0, size=64,
                               progress=False)
    model = MaskedAutoencoderHiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1),
                                   decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1)
    module = MAEPretrainModule(model, optimizer={"lr": 1e-3, "warmup_steps": 1}, pictures={"every_n_steps": 0})
    data = ImageDataModule(root=str(images), input_size=64, batch_size=2, val_split=None,
                           loader={"num_workers": 0, "pin_memory": False})
    logger = WandbLogger(save_dir=str(tmp_path / "run"), project="unveil")
    export = ExportBackbone()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, max_epochs=-1, logger=logger,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path / "run", callbacks=[export])
    try:
        trainer.fit(module, datamodule=data)
    finally:
        logger.experiment.finish()

    (written,) = export.written
    assert written.name == "backbone.safetensors" and not list(written.parent.glob(".*final.ckpt"))
    state, architecture = load_backbone(written)
    assert architecture.class_path == "unveil.models.hiera.Hiera"
    trained = module.model.state_dict()
    assert state and all(torch.equal(value, trained[key]) for key, value in state.items())
    assert not [key for key in state if key.startswith(("decoder", "mask_token", "encoder_norm"))]

    (offline,) = offline_runs(tmp_path / "run")
    records = read_records(next(offline.glob("run-*.wandb")))
    artifacts = [record["artifact"] for record in records if record["type"] == "artifact"]
    assert len(artifacts) == 1, [record["type"] for record in records]
    artifact = artifacts[0]
    assert artifact["type"] == "model" and artifact["name"].startswith("backbone-")
    assert [entry["path"] for entry in artifact["manifest"]["contents"]] == ["backbone.safetensors"]
    assert sorted(artifact["aliases"]) == ["latest", "step-2"] and json.loads(artifact["metadata"])["global_step"] == 2


def test_export_backbone_is_one_option_on_a_recipe():
    from unveil.launch.cli import parse_recipe

    config = parse_recipe(PAPER, "--trainer.callbacks+=ExportBackbone", "--trainer.callbacks.format=timm")
    added = config.trainer.callbacks[-1]
    assert added.class_path == "unveil.launch.export.ExportBackbone"
    assert (added.init_args.format, added.init_args.log_artifact) == ("timm", True)
