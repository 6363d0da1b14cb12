"""Strategy and precision presets (``recipes/presets``): they resolve by name, stack on every GPU recipe and build
what they promise; the CLI writes checkpoints atomically by default. The FSDP preset also trains, pictures,
checkpoints and resumes on 2 CPU processes (slow: ``pytest -m slow``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from timm.models.vision_transformer import Block
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from unveil.launch.cli import parse_recipe
from unveil.launch.recipes import RecipeNotFoundError, resolve_recipe, shipped_presets, shipped_recipes
from unveil.models import MaskedAutoencoderHiera
from unveil.models.hiera import HieraBlock
from unveil.models.mavil import MAViL

GPU_RECIPES = [r.name for r in shipped_recipes() if r.name.startswith(("mae_hiera_", "mavil_stage"))]
FSDP_SCRIPT = Path(__file__).with_name("fsdp_cpu_script.py")


def build_strategy(config):
    """Instantiate ``trainer.strategy`` of a parsed config as LightningCLI would."""
    parser = ArgumentParser()
    parser.add_subclass_arguments((DDPStrategy, FSDPStrategy), "strategy")
    return parser.instantiate(parser.parse_object({"strategy": config.trainer.strategy.as_dict()})).strategy


def test_presets_are_shipped_and_resolve_by_name():
    assert [p.name for p in shipped_presets()] == ["presets/abswin", "presets/bf16", "presets/ddp", "presets/fsdp"]
    assert all(p.description.startswith("Preset:") for p in shipped_presets())
    assert resolve_recipe("presets/fsdp") == resolve_recipe("presets/fsdp.yaml") == shipped_presets()[3].path
    assert "presets/fsdp" not in [r.name for r in shipped_recipes()]  # partial configs are no recipes
    with pytest.raises(RecipeNotFoundError):
        resolve_recipe("presets/../quickstart")


@pytest.mark.parametrize("name", ["mae_hiera_l_in1k", "mae_hiera_h_16x224_k400", "mavil_stage1_as2m",
                                  "mavil_stage2_as2m"])
def test_fsdp_and_bf16_presets_stack_on_gpu_recipes(name):
    assert name in GPU_RECIPES
    config = parse_recipe(name, "--config", "presets/fsdp", "--config", "presets/bf16")
    assert config.trainer.precision == "bf16-mixed"
    assert config.trainer.accelerator == "gpu"
    strategy = build_strategy(config)
    assert type(strategy) is FSDPStrategy
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert set(policy._module_classes) == {HieraBlock, Block, MaskedAutoencoderHiera, MAViL}
    checkpointed = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert set(checkpointed._module_classes) == {HieraBlock, Block}
    assert strategy._state_dict_type == "full"  # one checkpoint file with the usual keys: resume and export read it
    # the recipe's own settings survive the stacking
    assert config.model.init_args.model.class_path.startswith("unveil.models.")


def test_ddp_preset_builds_a_ddp_strategy():
    config = parse_recipe("mae_hiera_b_in1k", "--config", "presets/ddp")
    strategy = build_strategy(config)
    assert type(strategy) is DDPStrategy
    # (jsonargparse also passes DistributedDataParallel's other arguments, with torch's own defaults)
    assert strategy._ddp_kwargs["find_unused_parameters"] is False
    assert strategy._ddp_kwargs["gradient_as_bucket_view"] is True


def test_cli_writes_checkpoints_atomically_by_default_and_keeps_it_when_plugins_are_added():
    config = parse_recipe("quickstart")
    assert [p.class_path for p in config.trainer.plugins] == ["unveil.pretrain.resume.AtomicCheckpointIO"]
    config = parse_recipe("quickstart", "--trainer.plugins+=lightning.pytorch.plugins.environments.LightningEnvironment")
    assert [p.class_path.rsplit(".", 1)[-1] for p in config.trainer.plugins] == [
        "AtomicCheckpointIO", "LightningEnvironment"]


@pytest.mark.slow
def test_fsdp_preset_trains_pictures_checkpoints_and_resumes_on_cpu(tmp_path):
    from unveil.datasets import make_image_folder

    images = make_image_folder(tmp_path / "images", num_classes=2, train_per_class=4, val_per_class=0, size=64,
                               progress=False)
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PL_GLOBAL_SEED")}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")

    def run(*args: str) -> dict:
        result = subprocess.run([sys.executable, str(FSDP_SCRIPT), str(images), str(tmp_path / "run"), *args],
                                env=env, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        return json.loads(line.removeprefix("RESULT "))

    first = run("2")
    assert first["global_step"] == 2
    assert first["wrapped"] == ["HieraBlock", "MaskedAutoencoderHiera"]
    assert first["checkpointed"] == 5  # 4 encoder blocks + 1 decoder block
    # FSDP flattens parameters into 1-D shards: the weight-decay groups must still come from the bare model
    bare = MaskedAutoencoderHiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1),
                                  decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1)
    from unveil.pretrain.optim import weight_decay_param_groups

    (decay_group,) = [g for g in weight_decay_param_groups(bare, 0.05) if g["weight_decay"] > 0]
    assert first["decayed"] == len(decay_group["params"]) > 0
    assert max(p.name for p in (tmp_path / "run" / "reconstructions").iterdir()) == "step_000002.png"

    import torch

    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    reference = MaskedAutoencoderHiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1),
                                       decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1).state_dict()
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in reference.items()}  # full, unsharded

    resumed = run("3", str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    assert resumed["global_step"] == 3
