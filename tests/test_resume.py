"""Exact resumption: a run killed at step k and resumed from its step-k checkpoint logs, bit for bit on the CPU,
the losses of the run that was never interrupted, and ends with the same weights (so the same optimiser state
and learning-rate schedule). Also the pieces: the resumable sampler, per-sample augmentation seeds, and
checkpoint files that a crash while writing cannot corrupt."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from unveil.datasets import (
    AudioVideoDataModule,
    ImageDataModule,
    ShardOptions,
    make_audio_video_folder,
    make_image_folder,
)
from unveil.datasets.common import ResumableLoader, ResumableSampler, SeededSamples, derive_seed
from unveil.datasets.shards import make_shards
from unveil.models import MaskedAutoencoderHiera, MAViL
from unveil.pretrain import MAEPretrainModule, MAViLPretrainModule
from unveil.pretrain.resume import AtomicCheckpointIO, PeriodicCheckpoint, global_batch_mask

TINY = {"embed_dim": 16, "num_heads": 1, "stages": (1, 1, 1, 1), "decoder_embed_dim": 16, "decoder_depth": 1,
        "decoder_num_heads": 1}
BATCHES_PER_EPOCH = 3  # 12 training images, batch 4
EPOCHS = 3


class Killed(Exception):
    """Stands in for a crash or a pre-emption."""


class Recorder(pl.Callback):
    """Per optimiser step: the loss returned by training_step, the learning rate and the batch's sample keys."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.kill_at = kill_at
        self.losses: dict[int, torch.Tensor] = {}
        self.lrs: dict[int, float] = {}
        self.keys: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        # The step-k checkpoint is written at the end of step k (checkpoint callbacks run last), so the
        # process dies at the start of step k + 1, as a killed job would, with a batch already fetched.
        if trainer.global_step == self.kill_at:
            raise Killed(f"killed before step {self.kill_at + 1}")
        self.keys[trainer.global_step + 1] = list(batch["key"])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step] = outputs["loss"].detach().clone()
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"), num_classes=2, train_per_class=6, val_per_class=0,
                             size=64, progress=False)


def tiny_mae() -> MAEPretrainModule:
    model = MaskedAutoencoderHiera(input_size=(64, 64), drop_path_rate=0.1, **TINY)
    return MAEPretrainModule(model, optimizer={"lr": 2e-3, "warmup_steps": 2, "min_lr": 1e-4}, pictures={"every_n_steps": 0})


def mae_run(images: Path, num_workers: int):
    module = tiny_mae()
    data = ImageDataModule(root=str(images), input_size=64, batch_size=4, val_split=None, crop_scale=(0.3, 1.0),
                           loader={"num_workers": num_workers, "pin_memory": False})
    return module, data


def mavil_run(clips: Path, num_workers: int):
    """MAViL stage 1 with every random part on: masks, drop path, crops, flips, SpecAugment, clip start."""
    model = MAViL(audio_size=(192, 128), num_frames=4, image_size=32, patch_size=16, tubelet_frames=2, embed_dim=32,
                  depth=1, num_heads=2, fusion_depth=1, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                  projection_dim=16, audio_mask_ratio=0.8, video_mask_ratio=0.5, drop_path_rate=0.1)
    module = MAViLPretrainModule(model,
                                 optimizer={"lr": 2e-3, "warmup_steps": 2, "min_lr": 1e-4},
                                 contrastive={"inter_weight": 1.0, "intra_weight": 0.5},
                                 pictures={"every_n_steps": 0})
    data = AudioVideoDataModule(root=str(clips), duration=2.0, video_fps=2.0, num_frames=4, input_size=32,
                                crop_scale=(0.6, 1.0), target_length=192, fbank={"freqm": 24, "timem": 48},
                                batch_size=4, val_split=None,
                                loader={"num_workers": num_workers, "pin_memory": False})
    return module, data


def mae_on_shards_run(shards: Path, num_workers: int):
    module = tiny_mae()
    data = ImageDataModule(shards=str(shards), input_size=64, batch_size=4, val_split=None,
                           shard_options=ShardOptions(shuffle_buffer=4), crop_scale=(0.3, 1.0),
                           loader={"num_workers": num_workers, "pin_memory": False})
    return module, data


def fit(images: Path, out: Path, kill_at: int | None = None, ckpt_path: str | None = None,
        precision: str = "32-true", num_workers: int = 1, seed: int = 0, build=mae_run, max_steps: int = -1,
        max_epochs: int = EPOCHS, every_step: bool = True):
    """A tiny pretraining run of EPOCHS epochs (or ``max_steps``), checkpointing every step (else at the end of
    each epoch, Lightning's default); returns (recorder, module)."""
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.manual_seed(1234 if ckpt_path else 0)  # a resumed process starts from another global RNG state
    module, data = build(images, num_workers)
    recorder = Recorder(kill_at)
    checkpoints = {"every_n_train_steps": 1, "save_top_k": -1} if every_step else {}
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision=precision, max_epochs=max_epochs, max_steps=max_steps, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out, plugins=[AtomicCheckpointIO()],
        callbacks=[recorder, ModelCheckpoint(dirpath=out / "checkpoints", filename="{step}", save_last=True,
                                             **checkpoints)],
    )
    if kill_at is None:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    else:
        with pytest.raises(Killed):
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return recorder, module


_REFERENCES: dict[str, tuple[Recorder, MAEPretrainModule]] = {}


def uninterrupted(images: Path, tmp_path_factory, precision: str):
    if precision not in _REFERENCES:
        _REFERENCES[precision] = fit(images, tmp_path_factory.mktemp("reference"), precision=precision)
    return _REFERENCES[precision]


def assert_same_run(resumed: Recorder, reference: Recorder, module, reference_module, after: int,
                    total: int = BATCHES_PER_EPOCH * EPOCHS) -> None:
    assert sorted(reference.losses) == list(range(1, total + 1))
    assert sorted(resumed.losses) == list(range(after + 1, total + 1))
    for step in resumed.losses:
        assert resumed.keys[step] == reference.keys[step], f"step {step}: other samples"
        assert resumed.lrs[step] == reference.lrs[step], f"step {step}: other learning rate"
        assert torch.equal(resumed.losses[step], reference.losses[step]), (
            f"step {step}: loss {resumed.losses[step].item()!r} != {reference.losses[step].item()!r}")
    for (name, value), expected in zip(module.state_dict().items(), reference_module.state_dict().values()):
        assert torch.equal(value, expected), name


@pytest.mark.parametrize(
    ("kill_at", "precision", "num_workers"),
    [
        (4, "32-true", 1),     # mid-epoch, one worker process
        (6, "32-true", 0),     # at the end of an epoch, loading in the main process
        (5, "bf16-mixed", 2),  # mid-epoch, mixed precision, two workers
    ],
)
def test_resumed_run_equals_uninterrupted_run(images, tmp_path, tmp_path_factory, kill_at, precision, num_workers):
    reference, reference_module = uninterrupted(images, tmp_path_factory, precision)
    killed, _ = fit(images, tmp_path, kill_at=kill_at, precision=precision, num_workers=num_workers)
    assert sorted(killed.losses) == list(range(1, kill_at + 1))
    checkpoint = tmp_path / "checkpoints" / f"step={kill_at}.ckpt"
    resumed, module = fit(images, tmp_path, ckpt_path=str(checkpoint), precision=precision, num_workers=num_workers)
    assert_same_run(resumed, reference, module, reference_module, after=kill_at)


def test_resumed_mavil_run_equals_uninterrupted_run(tmp_path_factory):
    clips = make_audio_video_folder(tmp_path_factory.mktemp("clips"), num_classes=2, train_per_class=4,
                                    val_per_class=0, duration=2.0, fps=4, size=32, progress=False)
    reference, reference_module = fit(clips, tmp_path_factory.mktemp("mavil-reference"), build=mavil_run)
    out = tmp_path_factory.mktemp("mavil")
    fit(clips, out, kill_at=3, build=mavil_run)
    resumed, module = fit(clips, out, ckpt_path=str(out / "checkpoints" / "step=3.ckpt"), build=mavil_run)
    assert_same_run(resumed, reference, module, reference_module, after=3, total=2 * EPOCHS)  # 8 clips, batch 4


def test_resumed_shard_run_restarts_the_interrupted_epoch_in_its_own_order(images, tmp_path_factory):
    """Shards keep no mid-epoch position (the documented limit): the resumed epoch is read again from its start,
    in that epoch's order, for the batches the epoch has left; the epochs after it are the uninterrupted ones."""
    shards = make_shards("images", tmp_path_factory.mktemp("shards"), images, max_count=3, progress=False)
    reference, _ = fit(shards, tmp_path_factory.mktemp("shard-reference"), num_workers=0, build=mae_on_shards_run)
    out = tmp_path_factory.mktemp("shard-run")
    fit(shards, out, kill_at=4, num_workers=0, build=mae_on_shards_run)
    resumed, _ = fit(shards, out, ckpt_path=str(out / "checkpoints" / "step=4.ckpt"), num_workers=0,
                     build=mae_on_shards_run)
    assert sorted(resumed.keys) == [5, 6, 7, 8, 9]
    assert [resumed.keys[5], resumed.keys[6]] == [reference.keys[4], reference.keys[5]]  # epoch 1 from its start
    assert [resumed.keys[step] for step in (7, 8, 9)] == [reference.keys[step] for step in (7, 8, 9)]
    assert reference.keys[4] != reference.keys[1]  # epochs differ in order, so epoch 1 is not epoch 0 again


def test_checkpoint_without_loader_position_restarts_its_epoch_in_its_own_order(images, tmp_path, tmp_path_factory):
    """A checkpoint without the loader's state (written before the loader saved one) still resumes the right epoch:
    from its start, in its order, like shards."""
    reference, _ = uninterrupted(images, tmp_path_factory, "32-true")
    fit(images, tmp_path, kill_at=4, num_workers=1)
    state = torch.load(tmp_path / "checkpoints" / "step=4.ckpt", weights_only=False)
    del state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    torch.save(state, tmp_path / "old.ckpt")
    resumed, _ = fit(images, tmp_path, ckpt_path=str(tmp_path / "old.ckpt"), num_workers=1)
    assert [resumed.keys[5], resumed.keys[6]] == [reference.keys[4], reference.keys[5]]
    assert [resumed.keys[step] for step in (7, 8, 9)] == [reference.keys[step] for step in (7, 8, 9)]


def test_a_run_stopped_by_max_steps_continues_with_the_next_batch(images, tmp_path, tmp_path_factory):
    """Train to max_steps (max_epochs: -1, as the quickstarts), then continue from last.ckpt with more steps: the
    batches go on in the uninterrupted order. Lightning writes that checkpoint as if the epoch had ended and sets
    the sampler's epoch to the next one before it finishes the epoch: the loader keeps to the trainer's epoch."""
    reference, _ = uninterrupted(images, tmp_path_factory, "32-true")
    first, _ = fit(images, tmp_path, num_workers=0, max_steps=4, max_epochs=-1, every_step=False)
    more, _ = fit(images, tmp_path, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"), num_workers=0,
                  max_steps=9, max_epochs=-1, every_step=False)
    assert sorted(first.keys) == [1, 2, 3, 4] and sorted(more.keys) == [5, 6, 7, 8, 9]
    assert {**first.keys, **more.keys} == reference.keys


def test_a_different_seed_gives_a_different_run(images, tmp_path, tmp_path_factory):
    """The control: the losses depend on the seed, so the equalities above are not vacuous."""
    reference, _ = uninterrupted(images, tmp_path_factory, "32-true")
    other, _ = fit(images, tmp_path, seed=1, num_workers=0)
    assert other.keys[1] != reference.keys[1]
    assert not torch.equal(other.losses[1], reference.losses[1])


# ------------------------------------------------------------------------------------------------ the pieces


def test_sampler_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    sampler = ResumableSampler(10, batch_size=3, seed=7)
    first = list(sampler)
    assert len(first) == len(sampler) == 9  # 3 full batches, the 10th sample dropped this epoch
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for i, _ in second] != [i for i, _ in first]  # a new order each epoch
    sampler.resume_at(1, first_sample=6, batches_before=2)
    assert list(sampler) == second[6:]
    sampler.set_epoch(1)
    assert list(sampler) == second[6:]  # the resumed epoch, iterated again, resumes again
    sampler.set_epoch(2)
    assert len(list(sampler)) == 9  # the next epoch is whole
    sampler.set_epoch(1)
    assert list(sampler) == second  # and the resume is forgotten


def test_ranks_take_contiguous_shares_of_the_single_process_batches():
    single = list(ResumableSampler(20, batch_size=4, seed=3))
    ranks = [list(ResumableSampler(20, batch_size=2, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    for step in range(5):
        joined = ranks[0][2 * step: 2 * step + 2] + ranks[1][2 * step: 2 * step + 2]
        assert joined == single[4 * step: 4 * step + 4]


def test_sample_seeds_fix_the_augmentation_whatever_the_worker():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, index):
            return torch.rand(2) + index

    samples = SeededSamples(Noisy())
    key = (3, derive_seed(0, "sample", 0, 3))
    torch.manual_seed(1)
    first = samples[key]
    torch.rand(5)  # another worker's RNG history
    state = torch.get_rng_state()
    assert torch.equal(samples[key], first)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    assert not torch.equal(samples[(3, derive_seed(0, "sample", 1, 3))], first)  # another epoch, another draw


def test_loader_state_without_a_trainer_counts_the_batches_handed_out():
    loader = ResumableLoader(list(range(12)), batch_size=2, seed=5)
    iterator = iter(loader)
    seen = [next(iterator) for _ in range(2)]
    state = loader.state_dict()
    assert (state["epoch"], state["sample"], state["batches"]) == (0, 4, 2)
    rest = list(iterator)
    again = ResumableLoader(list(range(12)), batch_size=2, seed=5)
    again.load_state_dict(state)
    assert [b.tolist() for b in again] == [b.tolist() for b in rest]
    assert len(seen) + len(rest) == len(loader) == 6


def test_masks_of_two_ranks_are_the_rows_of_the_global_batch_mask():
    model = MaskedAutoencoderHiera(input_size=(64, 64), **TINY)
    x = torch.zeros(6, 3, 64, 64)
    whole = global_batch_mask(model, x, seed=11)
    shares = [global_batch_mask(model, x[:3], seed=11, rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(torch.cat(shares), whole)
    assert not torch.equal(shares[0], shares[1])


# ------------------------------------------------------------------------------------------------ checkpoint files


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "weight": torch.ones(3)}, target)
    before = target.read_bytes()

    real_save = torch.save

    def crash_halfway(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)
        file.seek(len(before) // 2)
        file.truncate()  # half a checkpoint on disk, then the process "dies"
        raise Killed("crash while writing")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(Killed):
        io.save_checkpoint({"step": 2, "weight": torch.zeros(3)}, target)
    monkeypatch.undo()

    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no partial file left behind
    assert target.read_bytes() == before
    loaded = torch.load(target, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["weight"], torch.ones(3))


def test_atomic_writer_replaces_and_cleans_up_after_killed_writers(tmp_path):
    target = tmp_path / "last.ckpt"
    stale = tmp_path / ".last.ckpt.999.deadbeef.tmp"  # what a process killed mid-write leaves
    stale.write_bytes(b"partial")
    AtomicCheckpointIO().save_checkpoint({"step": 3}, target)
    assert torch.load(target, weights_only=True) == {"step": 3}
    assert not stale.exists()
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_lightning_checkpoints_through_the_atomic_writer_resume(images, tmp_path):
    """Lightning writes last.ckpt and step checkpoints through the plugin, and they load for resuming."""
    fit(images, tmp_path, kill_at=2, num_workers=0)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step=1.ckpt", "step=2.ckpt"]
    state = torch.load(folder / "last.ckpt", weights_only=False)
    assert state["global_step"] == 2
    loader_state = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (loader_state["epoch"], loader_state["sample"], loader_state["batches"]) == (0, 8, 2)


@pytest.mark.parametrize("periodic_class", [PeriodicCheckpoint, ModelCheckpoint])
def test_periodic_checkpoint_saves_the_final_state(images, tmp_path, periodic_class):
    """7 steps with a save every 3: Lightning's ModelCheckpoint leaves last.ckpt at step 6; PeriodicCheckpoint
    writes the final step too, and the weights in it are the trained module's."""
    pl.seed_everything(0, verbose=False)
    module, data = mae_run(images, num_workers=0)
    periodic = periodic_class(dirpath=tmp_path / "checkpoints", every_n_train_steps=3, save_top_k=0, save_last=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=7, max_epochs=-1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         plugins=[AtomicCheckpointIO()], callbacks=[periodic])
    trainer.fit(module, datamodule=data)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    if periodic_class is ModelCheckpoint:  # the gap PeriodicCheckpoint closes
        assert last["global_step"] == 6
        return
    assert last["global_step"] == 7
    for name, value in module.state_dict().items():
        assert torch.equal(last["state_dict"][name], value), name
