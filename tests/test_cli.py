"""The ``unveil`` command: recipes by name, one-line errors before anything is built, and a short end-to-end fit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported here so its log handler binds pytest's stderr, not a test's)
import pytest
import yaml
from unveil.launch.cli import condense_parser_error, main
from unveil.launch.recipes import RecipeNotFoundError, recipes_dir, resolve_recipe, shipped_recipes

UNVEIL = Path(sys.executable).with_name("unveil")


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The stderr of a failed command: exactly one ``unveil: error:`` line (Lightning may log 'Seed set')."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Seed set")]
    assert len(lines) == 1, err
    assert lines[0].startswith("unveil: error: "), lines[0]
    return lines[0]


def recipe_copy(tmp_path: Path, old: str, new: str, name: str = "edited.yaml") -> Path:
    text = (recipes_dir() / "quickstart.yaml").read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


# ------------------------------------------------------------------------------------------------------ recipes


def test_recipes_command_lists_every_shipped_recipe(capsys):
    code, out, _ = run_main(capsys, "recipes")
    assert code == 0
    recipe_part, _, preset_part = out.strip().partition("\n\npresets")
    lines = recipe_part.splitlines()
    names = sorted(p.stem for p in recipes_dir().glob("*.yaml"))
    assert [line.split()[0] for line in lines] == names
    presets = sorted(f"presets/{p.stem}" for p in (recipes_dir() / "presets").glob("*.yaml"))
    assert [line.split()[0] for line in preset_part.splitlines()[1:]] == presets == [
        "presets/abswin", "presets/bf16", "presets/ddp", "presets/fsdp"]
    assert {"quickstart", "quickstart_video", "mae_hiera_b_in1k", "mae_hiera_b_16x224_k400"} <= set(names)
    quickstart = next(line for line in lines if line.split()[0] == "quickstart")
    assert "Hiera" in quickstart and "#" not in quickstart  # the first comment line, without '#'


def test_console_script_runs():
    result = subprocess.run([str(UNVEIL), "recipes"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "quickstart" in result.stdout


def test_recipe_resolution(tmp_path):
    shipped = recipes_dir() / "quickstart.yaml"
    assert resolve_recipe("quickstart") == shipped
    assert resolve_recipe("quickstart.yaml") == shipped
    assert resolve_recipe(str(shipped)) == shipped
    own = tmp_path / "quickstart"  # a file of that name wins over the shipped recipe
    own.write_text("seed_everything: 1\n")
    assert resolve_recipe(str(own)) == own
    with pytest.raises(RecipeNotFoundError, match="see 'unveil recipes'"):
        resolve_recipe("no_such_recipe")
    assert all(r.description for r in shipped_recipes())


# ------------------------------------------------------------------------------------------------------ errors


def test_missing_recipe_fails_with_one_line(capsys):
    code, _, err = run_main(capsys, "fit", "--config", "no_such_recipe")
    assert code == 2
    assert error_line(err) == (
        "unveil: error: recipe 'no_such_recipe' not found (not a file, not a shipped recipe; see 'unveil recipes')"
    )


def test_unknown_key_in_recipe_names_key_and_file(capsys, tmp_path):
    path = recipe_copy(tmp_path, "decoder_depth:", "decoder_dpeth:")
    code, _, err = run_main(capsys, "fit", "--config", str(path))
    assert code == 2
    line = error_line(err)
    assert "unknown key 'model.init_args.model.init_args.decoder_dpeth'" in line and "edited.yaml" in line


def test_keys_from_before_the_option_groups_fail_with_one_line(capsys):
    """``lr`` and ``num_workers`` moved under ``optimizer:`` and ``loader:`` (README, Recipes): the old keys
    stop the command at once, naming the key, and the new ones parse."""
    code, _, err = run_main(capsys, "fit", "--config", "quickstart", "--model.init_args.lr", "1e-3")
    assert code == 2 and error_line(err).endswith("unknown key 'model.init_args.lr' on the command line")
    code, _, err = run_main(capsys, "fit", "--config", "quickstart", "--data.init_args.num_workers", "0")
    assert code == 2 and error_line(err).endswith("unknown key 'data.init_args.num_workers' on the command line")
    with pytest.raises(SystemExit) as printed:
        main(["fit", "--config", "quickstart", "--model.init_args.optimizer.lr", "1e-3",
              "--data.init_args.loader.num_workers", "0", "--print_config"])
    assert printed.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["optimizer"]["lr"] == 1e-3
    assert config["model"]["init_args"]["optimizer"]["warmup_steps"] == 20  # the recipe's other values stay
    assert config["data"]["init_args"]["loader"] == {
        "num_workers": 0, "pin_memory": True, "val_batch_size": None, "shuffle_seed": 0
    }


def test_unknown_top_level_and_trainer_keys(capsys, tmp_path):
    code, _, err = run_main(capsys, "fit", "--config", str(recipe_copy(tmp_path, "max_steps:", "max_stepz:")))
    assert code == 2 and "unknown key 'trainer.max_stepz'" in error_line(err)
    code, _, err = run_main(capsys, "fit", "--config", "quickstart", "--data.init_args.batch_sise", "3")
    assert code == 2 and error_line(err).endswith("unknown key 'data.init_args.batch_sise' on the command line")


def test_wrong_type_fails_with_one_line(capsys, tmp_path):
    code, _, err = run_main(capsys, "fit", "--config", "quickstart", "--trainer.max_steps", "lots")
    assert code == 2
    assert error_line(err) == (
        "unveil: error: bad value for 'trainer.max_steps' on the command line: expected int, got lots"
    )
    path = recipe_copy(tmp_path, "lr: 1.5e-3", "lr: fast")
    code, _, err = run_main(capsys, "fit", "--config", str(path))
    assert code == 2
    line = error_line(err)
    assert "bad value for 'model.init_args.optimizer.lr'" in line and "expected float" in line and "fast" in line


def test_bad_class_path_and_bad_yaml(capsys, tmp_path):
    path = recipe_copy(tmp_path, "unveil.pretrain.MAEPretrainModule", "unveil.pretrain.NoSuchModule")
    code, _, err = run_main(capsys, "fit", "--config", str(path))
    assert code == 2 and "cannot import class_path 'unveil.pretrain.NoSuchModule'" in error_line(err)
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_steps: [1\n")
    code, _, err = run_main(capsys, "fit", "--config", str(broken))
    assert code == 2 and "invalid YAML" in error_line(err)


def test_missing_data_fails_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/shapes here
    code, _, err = run_main(capsys, "fit", "--config", "quickstart")
    assert code == 2
    line = error_line(err)
    assert "'data/shapes' does not exist" in line and "unveil synth images" in line
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_condense_keeps_unknown_messages_to_one_line():
    assert condense_parser_error("something odd\nwith detail") == "something odd"
    nested = (
        'Parser key "model":\n  Does not validate against any of the Union subtypes\n  Errors:\n'
        "    - Problem with given class_path 'a.B':\n        Parser key \"depth\":\n"
        "          Expected a <class 'int'>. Got value: deep\n    - Expected a <class 'NoneType'>\n"
    )
    assert condense_parser_error(nested) == "bad value for 'model.init_args.depth': expected int, got deep"


def test_unknown_command(capsys):
    code, _, err = run_main(capsys, "trian")
    assert code == 2 and "unknown command 'trian'" in error_line(err)


# ------------------------------------------------------------------------------------------------ end to end


def test_synth_and_fit_quickstart_end_to_end(capsys, tmp_path, monkeypatch):
    """``unveil synth images`` then ``unveil fit --config quickstart`` for 2 steps on a tiny dataset."""
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_main(capsys, "synth", "images", "--out", "data/shapes", "--num_classes", "2",
                            "--train_per_class", "2", "--val_per_class", "1", "--size", "64", "--progress", "false")
    assert code == 0 and "data/shapes" in out
    assert len(list((tmp_path / "data/shapes/train").rglob("*.JPEG"))) == 4

    code, _, err = run_main(
        capsys, "fit", "--config", "quickstart",
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
        "--data.init_args.batch_size", "2", "--data.init_args.loader.num_workers", "0",
        "--model.init_args.pictures.num_samples", "1",
    )
    assert code == 0, err
    run = tmp_path / "runs/quickstart/version_0"
    assert sorted(p.name for p in (run / "reconstructions").glob("*.png")) == ["step_000000.png", "step_000002.png"]
    assert list((run / "checkpoints").glob("*.ckpt"))
    assert (run / "config.yaml").is_file()  # LightningCLI's copy of the full config
    assert list(run.glob("events.out.tfevents.*"))


def test_synth_bad_option(capsys, tmp_path):
    code, _, err = run_main(capsys, "synth", "images", "--out", str(tmp_path / "x"), "--num_clases", "3")
    assert code == 2 and "unknown key 'num_clases'" in error_line(err)
    assert shutil.which("unveil") or UNVEIL.exists()
