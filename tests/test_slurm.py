"""``unveil slurm``: the sbatch script and the pinned config it writes (fast, no cluster), then real jobs on
a one-node SLURM cluster on 127.0.0.1 (tests/slurm_cluster.py): a 2-rank CPU DDP run of the quickstart recipe,
and a run requeued mid-way that resumes from its checkpoint and ends at max_steps."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported first: its log handler binds pytest's stderr, not a test's)
import pytest
import torch
import yaml
from unveil.launch import slurm
from unveil.launch.cli import main, parse_recipe

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import slurm_cluster

RUN_OPTIONS = ["--nodes", "2", "--gpus-per-node", "4", "--cpus-per-task", "6", "--time", "12:00:00",
               "--partition", "gpu", "--account", "proj", "--job-name", "mae"]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Seed set")]
    assert len(lines) == 1, err
    assert lines[0].startswith("unveil: error: "), lines[0]
    return lines[0]


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An ``sbatch`` on PATH that records its arguments and answers job id 4242 (the submission boundary only;
    the cluster tests below use the real one)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls.txt"
    script = bin_dir / "sbatch"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho 4242\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return calls


WANDB = "--trainer.logger={class_path: WandbLogger, init_args: {project: unveil}}"


# --------------------------------------------------------------------------------------- script, no cluster


def test_dry_run_prints_the_script_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "slurm", "--config", "quickstart", *RUN_OPTIONS, "--dry-run",
                              "--trainer.max_steps", "10", "--sbatch=--qos=high")
    assert code == 0, err
    run = tmp_path / "runs/quickstart/mae"
    assert [line for line in out.splitlines() if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=mae",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --time=12:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        f"#SBATCH --chdir={tmp_path}",
        f"#SBATCH --output={run}/slurm-%j.out",
        f"#SBATCH --error={run}/slurm-%j.err",
        "#SBATCH --open-mode=append",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
        "#SBATCH --qos=high",
    ]
    assert out.startswith("#!/bin/bash\n")
    srun = [line for line in out.splitlines() if line.startswith("srun ")]
    unveil = Path(sys.executable).with_name("unveil")
    assert srun == [f'srun --kill-on-bad-exit=1 {unveil} fit --config "$RUN/config.yaml" --ckpt_path "$CKPT"']
    assert f"RUN={run}\n" in out
    assert "dry run: nothing written" in err
    assert not (tmp_path / "runs").exists()


def test_submission_writes_a_pinned_config_and_the_script(capsys, tmp_path, fake_sbatch):
    code, out, err = run_main(capsys, "slurm", "--config", "quickstart", "--gpus-per-node", "0",
                              "--tasks-per-node", "2", "--trainer.max_steps", "10",
                              "--trainer.logger+=CSVLogger", "--trainer.logger.save_dir=elsewhere")
    assert code == 0, err
    run = tmp_path / "runs/quickstart/quickstart"
    assert f"submitted job 4242: run folder {run}" in out
    assert fake_sbatch.read_text().split() == ["--parsable", str(run / "job.sbatch")]
    assert (run / "checkpoints").is_dir() and os.access(run / "job.sbatch", os.X_OK)
    script = (run / "job.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=2\n#SBATCH --cpus-per-task=3\n" in script  # num_workers 2 + 1
    assert "--gpus-per-node" not in script

    config = yaml.safe_load((run / "config.yaml").read_text())
    trainer = config["trainer"]
    pinned = (trainer["accelerator"], trainer["devices"], trainer["num_nodes"], trainer["strategy"])
    assert pinned == ("cpu", 2, 1, "ddp")
    assert trainer["max_steps"] == 10  # the override is applied
    assert trainer["default_root_dir"] == str(run)
    assert config["ckpt_path"] == "last"
    tensorboard, csv = trainer["logger"]
    assert tensorboard["class_path"].endswith("TensorBoardLogger") and csv["class_path"].endswith("CSVLogger")
    assert {k: tensorboard["init_args"][k] for k in ("save_dir", "name", "version")} == {
        "save_dir": str(run), "name": "", "version": ""}
    assert {k: csv["init_args"][k] for k in ("save_dir", "name", "version")} == {
        "save_dir": str(run), "name": "", "version": "csv"}
    checkpoints = [c["init_args"] for c in trainer["callbacks"]
                   if c["class_path"].endswith("ModelCheckpoint")]
    assert checkpoints and all(c["dirpath"] == str(run / "checkpoints") for c in checkpoints)
    assert any(c["save_last"] for c in checkpoints)
    # what `unveil fit` will do with it on the cluster: it parses, with the same values
    reparsed = parse_recipe(str(run / "config.yaml"))
    assert reparsed.trainer.devices == 2 and reparsed.ckpt_path == "last" and reparsed.trainer.max_steps == 10
    recipe = parse_recipe("quickstart")
    assert reparsed.model == recipe.model and reparsed.data == recipe.data  # the rest is the recipe's


def saved_logger(run: Path):
    return yaml.safe_load((run / "config.yaml").read_text())["trainer"]["logger"]


def test_wandb_id_is_kept_on_resubmission(capsys, tmp_path, fake_sbatch):
    ids = []
    for _ in range(2):
        code, out, err = run_main(capsys, "slurm", "--config", "quickstart", "--gpus-per-node", "0",
                                  "--job-name", "wb", WANDB)
        assert code == 0, err
        logger = saved_logger(tmp_path / "runs/quickstart/wb")
        assert logger["class_path"].endswith("WandbLogger")
        assert logger["init_args"]["save_dir"] == str(tmp_path / "runs/quickstart/wb")
        ids.append(logger["init_args"]["id"])
    assert re.fullmatch(r"[a-z0-9]{8}", ids[0]) and ids[1] == ids[0]
    assert out.startswith("resubmitted job 4242")
    # another run folder is another W&B run
    code, _, err = run_main(capsys, "slurm", "--config", "quickstart", "--gpus-per-node", "0",
                            "--job-name", "other", WANDB)
    assert code == 0, err
    assert saved_logger(tmp_path / "runs/quickstart/other")["init_args"]["id"] != ids[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trainer.max_steps", "lots"], "bad value for 'trainer.max_steps' on the command line"),
        (["--trainer.max_stepz", "3"], "unknown key 'trainer.max_stepz' on the command line"),
        (["--time", "1h"], "'1h' is not a SLURM time limit"),
        (["--time", "1:75:00"], "'1:75:00' is not a SLURM time limit"),
        (["--nodes", "0"], "argument --nodes: must be >= 1, got 0"),
        (["--gpus-per-node", "2", "--tasks-per-node", "3"], "the job runs one task per GPU"),
        (["--job-name", "my run"], "is not a job name"),
    ],
)
def test_mistakes_fail_before_submission_with_one_line(capsys, tmp_path, fake_sbatch, argv, message):
    code, _, err = run_main(capsys, "slurm", "--config", "quickstart", *argv)
    assert code == 2 and message in error_line(err)
    assert not fake_sbatch.exists() and not (tmp_path / "runs").exists()


def test_missing_recipe(capsys, tmp_path, fake_sbatch):
    code, _, err = run_main(capsys, "slurm", "--config", "no_such_recipe")
    assert code == 2 and "recipe 'no_such_recipe' not found" in error_line(err)
    assert not fake_sbatch.exists()


def test_time_formats():
    for good in ("90", "30:00", "48:00:00", "2-00:00:00", "1-12", "1-12:30"):
        assert slurm.check_time(good) == good
    for bad in ("", "1h", "12:00:00:00", "1-25:00:00", "10:61", "-5", "1:2:3:4"):
        with pytest.raises(Exception, match="not a SLURM time limit"):
            slurm.check_time(bad)


def test_paper_recipe_defaults_to_its_nodes_and_gpus(tmp_path):
    job, _ = slurm.prepare(["--config", "mae_hiera_b_in1k", "--time", "2-00:00:00"], workdir=tmp_path)
    r = job.resources
    # num_workers 10 + 1 CPUs per task
    assert (r.nodes, r.gpus_per_node, r.tasks_per_node, r.cpus_per_task) == (4, 8, 8, 11)
    assert job.run_dir == tmp_path / "runs/mae_hiera_b_in1k/mae_hiera_b_in1k"
    trainer = job.config["trainer"]
    assert (trainer["accelerator"], trainer["devices"], trainer["num_nodes"]) == ("gpu", 8, 4)


def _logger(kind: str, **init) -> dict:
    return {"class_path": f"lightning.pytorch.loggers.{kind}", "init_args": init}


def test_pin_config_loggers_and_checkpoints(tmp_path):
    run = tmp_path / "run"
    pin = {"num_nodes": 1, "devices": 1, "accelerator": "cpu"}

    # no logger (Lightning's default would count version_N): an explicit TensorBoardLogger in the run folder;
    # no ModelCheckpoint: one is added, with a last.ckpt to resume from
    config = slurm.pin_config({"trainer": {"logger": None}}, run, **pin)
    assert config["trainer"]["logger"] == _logger("TensorBoardLogger", save_dir=str(run), name="", version="")
    assert config["trainer"]["callbacks"] == [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"save_last": True, "dirpath": str(run / "checkpoints")},
    }]
    assert config["trainer"]["strategy"] == "ddp" and config["ckpt_path"] == "last"

    # logging off stays off; a recipe's own strategy stays
    config = slurm.pin_config({"trainer": {"logger": False, "strategy": "fsdp"}}, run, **pin)
    assert config["trainer"]["logger"] is False and config["trainer"]["strategy"] == "fsdp"

    # a list: W&B gets the run folder and the id given (a recipe's own id would win), CSV the folder
    config = slurm.pin_config(
        {"trainer": {"logger": [_logger("WandbLogger", project="p", version=None, id=None, resume="never"),
                                _logger("CSVLogger", save_dir="x", name="lightning_logs", version=None)]}},
        run, wandb_id="abcd1234", **pin)
    wandb, csv = config["trainer"]["logger"]
    assert wandb["init_args"] == {"project": "p", "save_dir": str(run), "id": "abcd1234", "version": None,
                                  "resume": "allow"}
    assert csv["init_args"] == {"save_dir": str(run), "name": "", "version": ""}
    own = slurm.pin_config({"trainer": {"logger": _logger("WandbLogger", id="mine")}}, run, wandb_id="x",
                           **pin)
    assert own["trainer"]["logger"]["init_args"]["id"] == "mine"

    # every ModelCheckpoint writes to run/checkpoints; save_last is turned on where none has it
    config = slurm.pin_config({"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": "val/loss"}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "elsewhere"}},
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {}},
    ]}}, run, **pin)
    first, second, monitor = config["trainer"]["callbacks"]
    assert first["init_args"] == {"monitor": "val/loss", "dirpath": str(run / "checkpoints"),
                                  "save_last": True}
    assert second["init_args"] == {"dirpath": str(run / "checkpoints")}
    assert monitor["init_args"] == {}

    with pytest.raises(slurm.UsageError, match="enable_checkpointing is false"):
        slurm.pin_config({"trainer": {"enable_checkpointing": False}}, run, **pin)


def test_plain_drops_python_objects_and_keeps_data():
    class Plugin:
        pass

    assert slurm.plain({"a": (1, 2), "b": Path("/x"), "c": Plugin(), "d": [Plugin(), "s"], "e": None}) == {
        "a": [1, 2], "b": "/x", "d": ["s"], "e": None}


def _run_script_once(tmp_path: Path, files: dict[str, float]) -> str:
    """Run the job script's shell part with stand-ins for srun and scontrol; return the --ckpt_path it passes.
    ``files``: run-folder paths to create, with their modification times."""
    run = tmp_path / "run"
    for name, mtime in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
        os.utime(run / name, (mtime, mtime))
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text('#!/bin/sh\necho "SRUN $*"\n')
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node-a\necho node-b\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    resources = slurm.Resources(nodes=1, tasks_per_node=2, gpus_per_node=0, cpus_per_task=1)
    script = tmp_path / "job.sbatch"
    script.write_text(slurm.sbatch_script(resources, run, tmp_path, recipe="quickstart"))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_RESTART_COUNT": "1"}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True)
    srun = [line for line in result.stdout.splitlines() if line.startswith("SRUN ")]
    assert len(srun) == 1 and re.search(r"MASTER_ADDR=node-a:\d+,", result.stdout), result.stdout
    return srun[0].rsplit("--ckpt_path ", 1)[1]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, "last"),  # a fresh start
        ({"checkpoints/last.ckpt": 100}, "last"),
        ({"checkpoints/last.ckpt": 200, "hpc_ckpt_1.ckpt": 100}, "last"),  # trained on after a preemption
        ({"checkpoints/last.ckpt": 100, "hpc_ckpt_1.ckpt": 200}, "hpc_ckpt_1.ckpt"),  # preempted after it
        ({"hpc_ckpt_1.ckpt": 100, "hpc_ckpt_2.ckpt": 300, "checkpoints/last-v1.ckpt": 200},
         "hpc_ckpt_2.ckpt"),
        ({"hpc_ckpt_1.ckpt": 100}, "hpc_ckpt_1.ckpt"),
    ],
)
def test_script_resumes_from_the_newest_checkpoint(tmp_path, files, expected):
    chosen = _run_script_once(tmp_path, files)
    assert chosen == ("last" if expected == "last" else str(tmp_path / "run" / expected))


# --------------------------------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_cluster.missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    started = slurm_cluster.start(root)
    try:
        yield started
    finally:
        started.stop()
        for daemon, pid_file in slurm_cluster._pid_files(root).items():
            assert not pid_file.exists(), f"{daemon} still running"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from unveil.datasets import make_image_folder

    # 16 training images: 4 steps per epoch at 2 ranks x batch 2 (8 at one rank), which the final epoch shows
    return make_image_folder(tmp_path_factory.mktemp("shapes"), 2, 8, 2, size=64, progress=False)


TRAIN_IMAGES, BATCH = 16, 2


def tiny_quickstart(data: Path, probe: Path, max_steps: int, pace: float = 0.0) -> list[str]:
    """Recipe overrides: quickstart with a 0.3M-parameter Hiera at 64 px, last.ckpt every 2 steps, and the
    probe callback that records each rank's start."""
    model = "--model.init_args.model.init_args."
    return [
        "--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", "2",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--data.init_args.root", str(data), "--data.init_args.input_size", "64",
        "--data.init_args.batch_size", str(BATCH), "--data.init_args.loader.num_workers", "0",
        f"{model}input_size", "[64, 64]", f"{model}embed_dim", "16", f"{model}stages", "[1, 1, 1, 1]",
        f"{model}decoder_embed_dim", "16", f"{model}decoder_depth", "1", f"{model}decoder_num_heads", "1",
        "--model.init_args.pictures.num_samples", "1", "--model.init_args.pictures.every_n_steps", "1000",
        # the callbacks list replaced whole: last.ckpt every 2 steps, whatever the recipe's schedule
        ("--trainer.callbacks=[{class_path: ModelCheckpoint, init_args: {save_last: true, save_top_k: 0, "
         "every_n_train_steps: 2}}, "
         f"{{class_path: slurm_probe.Probe, init_args: {{out: '{probe}', pace: {pace}}}}}]"),
    ]


def submit(capsys, monkeypatch, cluster, tmp_path: Path, overrides: list[str]) -> tuple[int, Path]:
    """``unveil slurm`` a 2-task CPU job into tmp_path/run; returns (job id, run folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    python_path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    monkeypatch.setenv("PYTHONPATH", python_path)  # the job imports slurm_probe
    run = tmp_path / "run"
    code, out, err = run_main(capsys, "slurm", "--config", "quickstart", "--gpus-per-node", "0",
                              "--tasks-per-node", "2", "--cpus-per-task", "1", "--time", "10:00",
                              "--run-dir", str(run), *overrides)
    assert code == 0, err
    match = re.search(r"submitted job (\d+): run folder (\S+)", out)
    assert match and Path(match[2]) == run, out
    return int(match[1]), run


def job_logs(run: Path, job_id: int) -> str:
    return "".join((run / f"slurm-{job_id}.{kind}").read_text(errors="replace") for kind in ("out", "err"))


def step_of(checkpoint: Path) -> tuple[int, int]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return state["global_step"], state["epoch"]


def probes(folder: Path) -> dict[tuple[int, int], dict]:
    """(rank, restart) -> what the probe callback recorded at that start."""
    records = [json.loads(path.read_text()) for path in folder.glob("rank*-restart*.json")]
    return {(r["rank"], r["restart"]): r for r in records}


def test_two_rank_cpu_job_completes(capsys, monkeypatch, cluster, shapes, tmp_path):
    max_steps = 6
    overrides = tiny_quickstart(shapes, tmp_path / "probe", max_steps)
    job_id, run = submit(capsys, monkeypatch, cluster, tmp_path, overrides)
    final = cluster.wait(job_id, timeout=180)
    assert final["JobState"] == "COMPLETED", job_logs(run, job_id)[-3000:]
    assert final["Restarts"] == "0" and final["ExitCode"] == "0:0"

    started = probes(tmp_path / "probe")
    assert sorted(started) == [(0, 0), (1, 0)]  # both ranks trained ...
    assert all(r["world_size"] == 2 and r["start_step"] == 0 and r["job_id"] == str(job_id)
               for r in started.values())
    step, epoch = step_of(run / "checkpoints/last.ckpt")
    # ... on disjoint halves of the data: 16 images / (2 ranks x 2) = 4 steps an epoch: step 6 is in epoch 1
    assert step == max_steps and epoch == (max_steps - 1) // (TRAIN_IMAGES // (2 * BATCH))
    assert re.search(r"restart 0 on localhost, MASTER_ADDR=localhost:\d+, ckpt_path=last\n", job_logs(run, job_id))
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))


def wait_for_checkpoint(path: Path, job_id: int, cluster, timeout: float = 120) -> int:
    """Wait until ``path`` is a complete checkpoint (it loads) and return its global step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            try:
                return step_of(path)[0]
            except (RuntimeError, EOFError, OSError):
                pass  # still being written
        assert cluster.in_queue(job_id), f"job {job_id} ended before writing {path}: {cluster.job(job_id)}"
        time.sleep(0.1)
    raise TimeoutError(f"no {path} after {timeout} s")


def test_requeued_job_resumes_from_its_checkpoint(capsys, monkeypatch, cluster, shapes, tmp_path):
    max_steps = 16
    probe = tmp_path / "probe"
    # 0.8 s per step on the first start: ~11 s from the first checkpoint to the end, so the requeue lands
    # mid-run even on a loaded machine (polling squeue and loading the checkpoint take seconds there)
    overrides = tiny_quickstart(shapes, probe, max_steps, pace=0.8)
    job_id, run = submit(capsys, monkeypatch, cluster, tmp_path, overrides)
    first = wait_for_checkpoint(run / "checkpoints/last.ckpt", job_id, cluster)
    cluster.run("scontrol", "requeue", str(job_id))  # what preemption or a node failure does
    assert first < max_steps

    final = cluster.wait(job_id, timeout=240)
    logs = job_logs(run, job_id)
    assert final["JobState"] == "COMPLETED" and final["Restarts"] == "1", logs[-3000:]
    started = probes(probe)
    assert sorted(started) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    resumed_at = {started[rank, 1]["start_step"] for rank in (0, 1)}
    assert len(resumed_at) == 1 and first <= resumed_at.pop() < max_steps  # resumed, not restarted from 0
    assert re.search(r"restart 1 on localhost, MASTER_ADDR=localhost:\d+, ckpt_path=last\n", logs)
    assert f"Restored all states from the checkpoint at {run}/checkpoints/last.ckpt" in logs
    assert step_of(run / "checkpoints/last.ckpt")[0] == max_steps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe", "run"]  # one run folder, no version_1


@pytest.mark.slow
def test_sigusr1_saves_requeues_and_resumes(capsys, monkeypatch, cluster, shapes, tmp_path):
    """SLURM's warning before the time limit (sent by hand here): Lightning writes hpc_ckpt_1.ckpt and
    requeues the job itself; the restart resumes from the newer of that file and last.ckpt (which one depends
    on whether a step ended between the signal and the requeue's SIGTERM) and ends at max_steps."""
    max_steps = 16
    probe = tmp_path / "probe"
    overrides = tiny_quickstart(shapes, probe, max_steps, pace=0.4)
    job_id, run = submit(capsys, monkeypatch, cluster, tmp_path, overrides)
    wait_for_checkpoint(run / "checkpoints/last.ckpt", job_id, cluster)
    time.sleep(0.6)  # into the next step, so the hpc checkpoint is a step past last.ckpt
    cluster.run("scancel", "--signal=USR1", str(job_id))

    final = cluster.wait(job_id, timeout=240)
    logs = job_logs(run, job_id)
    assert final["JobState"] == "COMPLETED" and final["Restarts"] == "1", logs[-3000:]
    assert "Handling auto-requeue signal" in logs
    hpc = run / "hpc_ckpt_1.ckpt"
    saved_at = step_of(hpc)[0]
    chosen = re.search(r"restart 1 on localhost, MASTER_ADDR=localhost:\d+, ckpt_path=(\S+)", logs)[1]
    resumed_at = {probes(probe)[rank, 1]["start_step"] for rank in (0, 1)}
    if chosen == str(hpc):
        assert resumed_at == {saved_at}
    else:  # last.ckpt was written after the hpc checkpoint: at the same step or later
        assert chosen == "last" and len(resumed_at) == 1 and saved_at <= resumed_at.pop() < max_steps
    restored = hpc if chosen != "last" else run / "checkpoints/last.ckpt"
    assert f"Restored all states from the checkpoint at {restored}" in logs
    assert step_of(run / "checkpoints/last.ckpt")[0] == max_steps
