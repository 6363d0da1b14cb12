"""A real single-node SLURM cluster on the loopback interface, for tests (and for trying ``unveil slurm``).

    python tests/slurm_cluster.py start --dir /tmp/slurm     # prints: export SLURM_CONF=/tmp/slurm/slurm.conf
    SLURM_CONF=/tmp/slurm/slurm.conf sbatch job.sbatch
    python tests/slurm_cluster.py stop --dir /tmp/slurm      # cancels the jobs, stops the daemons

Needs root and the Debian packages ``slurmctld slurmd slurm-client munge`` (Slurm 22.05 on Debian 12).
Everything the daemons write (munge key and socket, slurm.conf, state, spool, pid and log files) lives under
``--dir``; the ports are picked free at start, so two clusters on one machine do not collide. Nothing under
/etc is touched and no daemon is left running after ``stop``.

Settings that matter on a small machine, and why:

- ``SlurmdParameters=config_overrides``: slurmd trusts ``CPUs=`` in slurm.conf, so a 2-core machine can run
  more tasks than it has cores (and a node that reports fewer resources is not drained).
- ``SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1``: a submitted or requeued batch
  job starts within a second, not at the next scheduling pass (30 to 60 s by default).
- ``AuthInfo=...,cred_expire=5``: a requeued job waits for its old job credential to expire before it may
  start again; the default (120 s) would make every requeue test wait two minutes.
- ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none``: no cgroups (containers rarely have
  them).
- The node is called ``localhost``: the node list is what Lightning (and ``unveil slurm``'s scripts) take as
  ``MASTER_ADDR``, so it must resolve.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

NODE = "localhost"
PARTITION = "debug"
DAEMONS = ("slurmctld", "slurmd", "munged")  # stop order: the controller first, munge (their auth) last
# Everything `start` needs; the apt packages: slurmctld slurmd slurm-client munge.
PROGRAMS = ("slurmctld", "slurmd", "munged", "munge", "unmunge", "sbatch", "squeue", "scontrol", "scancel",
            "sinfo", "srun")
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")  # daemons live here, not always on PATH


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path=os.pathsep.join(_SBIN))


def missing() -> str | None:
    """Why a local cluster cannot be started here (a reason to skip tests), or None when it can."""
    absent = [program for program in PROGRAMS if _which(program) is None]
    if absent:
        return (f"SLURM/munge not installed ({', '.join(absent)} missing): "
                "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts jobs as their user)"
    return None


def _free_ports(count: int) -> list[int]:
    """Ports free right now on the loopback interface (bound together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _paths(root: Path) -> dict[str, Path]:
    return {
        "conf": root / "slurm.conf",
        "munge_dir": root / "munge",            # socket folder: 755, or clients cannot reach the socket
        "munge_key_dir": root / "munge-key",    # key folder: 700, or munged refuses the key
        "state": root / "state",
        "spool": root / "spool",
        "log": root / "log",
        "run": root / "run",
    }


def _pid_files(root: Path) -> dict[str, Path]:
    run = _paths(root)["run"]
    return {daemon: run / f"{daemon}.pid" for daemon in DAEMONS}


def slurm_conf(root: Path, cpus: int, ctld_port: int, slurmd_port: int) -> str:
    """The slurm.conf text of a one-node cluster whose every file lives under ``root``."""
    p = _paths(root)
    return "\n".join([
        "ClusterName=unveil-test",
        f"SlurmctldHost={NODE}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={p['munge_dir'] / 'munge.socket'},cred_expire=5",
        f"StateSaveLocation={p['state']}",
        f"SlurmdSpoolDir={p['spool']}",
        f"SlurmctldPidFile={p['run'] / 'slurmctld.pid'}",
        f"SlurmdPidFile={p['run'] / 'slurmd.pid'}",
        f"SlurmctldLogFile={p['log'] / 'slurmctld.log'}",
        f"SlurmdLogFile={p['log'] / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SlurmdParameters=config_overrides",
        "SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1",
        "SchedulerType=sched/backfill",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "JobAcctGatherType=jobacct_gather/none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "KillWait=3",          # seconds from SIGTERM to SIGKILL when a job is cancelled or requeued
        "MinJobAge=600",       # keep finished jobs visible to `scontrol show job` for the test's duration
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class Cluster:
    """A running local cluster: ``env`` is the environment its clients (sbatch, squeue, ...) need."""

    root: Path
    conf: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster (stdout and stderr captured as text)."""
        result = subprocess.run([_which(command[0]) or command[0], *command[1:]], env=self.env,
                                capture_output=True, text=True, timeout=60, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, *args: str) -> int:
        """Submit (``sbatch ARGS``) and return the job id."""
        out = self.run("sbatch", "--parsable", *args).stdout.strip()
        return int(out.split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ExitCode, ...); without accounting, the only
        record of a finished job."""
        text = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def in_queue(self, job_id: int) -> bool:
        """Whether the job is still pending or running (``squeue -h -j``: empty once it has ended)."""
        return bool(self.run("squeue", "-h", "-j", str(job_id), check=False).stdout.strip())

    def wait(self, job_id: int, timeout: float = 300, poll: float = 0.5) -> dict[str, str]:
        """Wait until the job has left the queue and return its final ``scontrol show job`` fields."""
        deadline = time.monotonic() + timeout
        while self.in_queue(job_id):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still queued after {timeout:.0f} s: {self.job(job_id)}")
            time.sleep(poll)
        return self.job(job_id)

    def stop(self) -> None:
        stop(self.root)


def _munge_works(env: dict[str, str], socket_path: Path) -> bool:
    munge = subprocess.run([_which("munge"), "-n", "-S", str(socket_path)], capture_output=True, env=env,
                           check=False)
    if munge.returncode != 0:
        return False
    unmunge = subprocess.run([_which("unmunge"), "-S", str(socket_path)], input=munge.stdout,
                             capture_output=True, env=env, check=False)
    return unmunge.returncode == 0


def _wait_for(check, what: str, root: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            logs = _paths(root)["log"]
            tails = "".join(
                f"\n--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                for log in sorted(logs.glob("*.log"))
            )
            raise RuntimeError(f"local SLURM cluster: {what} not ready after {timeout:.0f} s{tails}")
        time.sleep(0.2)


def start(root: str | Path, cpus: int | None = None, timeout: float = 30) -> Cluster:
    """Start munged, slurmctld and slurmd for a one-node cluster under ``root``; return once the node is idle.

    ``cpus``: the node's CPU count as SLURM sees it (default: this machine's, and at least 4, so a 2-core
    machine can run a 2-task job beside another). Raises RuntimeError (with the daemons' log tails) when a
    daemon does not come up; whatever did start is stopped again.
    """
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    root = Path(root).resolve()
    p = _paths(root)
    for key in ("state", "spool", "log", "run"):
        p[key].mkdir(parents=True, exist_ok=True)
    p["munge_dir"].mkdir(parents=True, exist_ok=True)
    p["munge_dir"].chmod(0o755)
    p["munge_key_dir"].mkdir(parents=True, exist_ok=True)
    p["munge_key_dir"].chmod(0o700)
    key = p["munge_key_dir"] / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    key.chmod(0o600)

    ctld_port, slurmd_port = _free_ports(2)
    p["conf"].write_text(slurm_conf(root, cpus or max(4, os.cpu_count() or 1), ctld_port, slurmd_port))
    cluster = Cluster(root, p["conf"])
    env = cluster.env
    socket_path = p["munge_dir"] / "munge.socket"
    pids = _pid_files(root)

    def launch(*command: str) -> None:
        # The daemons fork into the background themselves; detach their stdio so no pipe of ours stays open.
        subprocess.run([_which(command[0]), *command[1:]], env=env, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)

    try:
        # --force: munged wants every folder above its socket open to all users, which a private scratch
        # folder (pytest's are 700) is not; only root talks to this munged, so the check guards nothing here.
        launch("munged", "--force", f"--socket={socket_path}", f"--key-file={key}",
               f"--pid-file={pids['munged']}",
               f"--log-file={p['log'] / 'munged.log'}", f"--seed-file={p['state'] / 'munged.seed'}")
        _wait_for(lambda: _munge_works(env, socket_path), "munge", root, timeout)
        launch("slurmctld", "-c", "-f", str(p["conf"]))
        launch("slurmd", "-N", NODE, "-f", str(p["conf"]))

        def node_idle() -> bool:
            state = cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip()
            return state == "idle"

        _wait_for(node_idle, "node", root, timeout)
    except BaseException:
        stop(root)
        raise
    return cluster


def _pid_alive(pid: int) -> bool:
    """Whether the process runs; a zombie (exited, not yet reaped by its parent, often PID 1) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stop(root: str | Path, timeout: float = 20) -> None:
    """Cancel every job of the cluster under ``root``, then stop its daemons by the PIDs in their pid files.

    Jobs are cancelled first because their processes (slurmstepd and the tasks) outlive slurmd. Safe to call
    twice, or on a cluster that only half started.
    """
    root = Path(root).resolve()
    conf = _paths(root)["conf"]
    pids = _pid_files(root)
    if conf.exists() and pids["slurmctld"].exists():
        cluster = Cluster(root, conf)
        try:
            jobs = cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                cluster.run("scancel", *jobs, check=False)
                deadline = time.monotonic() + timeout
                while cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.3)
        except (OSError, subprocess.SubprocessError):
            pass  # the controller is gone already: stop what is left
    for daemon in DAEMONS:
        pid_file = pids[daemon]
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            pid_file.unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop a one-node SLURM cluster on 127.0.0.1.")
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--dir", required=True, help="scratch folder for every file of the cluster")
    parser.add_argument("--cpus", type=int, default=None,
                        help="CPUs the node advertises (default: max(4, cores))")
    args = parser.parse_args(argv)
    if args.action == "start":
        try:
            cluster = start(args.dir, cpus=args.cpus)
        except RuntimeError as error:
            print(f"slurm_cluster: {error}", file=sys.stderr)
            return 1
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        stop(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
