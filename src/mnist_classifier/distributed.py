"""Data-parallel training across processes, on PyTorch's own engine (torchrun + DDP).

torchrun starts one process per rank and tells each its place through the environment
(WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT): that is torchrun's launch contract, not a
hyper-parameter. Without it, everything here is a no-op and training runs in one process.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

# Which share of each epoch a process takes is the batching's business (so that prediction and
# serving, which normalise through batching, never import this module).
from mnist_classifier.batching import Ranks

# A rank that dies mid-collective must not leave the others waiting for ever.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)
# Seconds torchrun gets to stop its workers after an interrupt, before it is killed.
LAUNCHER_STOP_TIMEOUT_S = 30
# Every process of one launch carries this in its environment, so leftovers can be found.
LAUNCH_TOKEN_VARIABLE = "MNIST_CLASSIFIER_LAUNCH"
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


class LaunchError(RuntimeError):
    """More processes were asked for than this machine runs usefully, or the launch variables
    in the environment make no sense; one line saying so."""


def launch_world_size() -> int:
    """How many processes the launcher (torchrun) started for this training; 1 without one.

    LaunchError if WORLD_SIZE is set to anything but a whole number from 1 up."""
    return _launch_variable("WORLD_SIZE", default=1, lowest=1)


def launched_by_torchrun() -> bool:
    return launch_world_size() > 1


def launch_rank() -> int | None:
    """This process's rank when a launcher (torchrun) started it; None in a plain process.

    torchrun sets RANK together with a WORLD_SIZE above 1; a RANK left in the environment on
    its own (by a shell profile or a job scheduler) does not make a plain run a rank, which
    would keep it from printing and recording anything."""
    if not launched_by_torchrun():
        return None
    return _launch_variable("RANK", default=None, lowest=0, below=launch_world_size())


def init_distributed(device: torch.device, backend: str = "auto") -> Ranks:
    """Join the process group torchrun set up: gloo on CPU, nccl on CUDA (or as asked)."""
    if not launched_by_torchrun():
        return Ranks()
    ranks = Ranks(
        rank=launch_rank(),
        world_size=launch_world_size(),
        local_rank=_launch_variable("LOCAL_RANK", default=0, lowest=0),
    )
    if not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(chosen, timeout=COLLECTIVE_TIMEOUT)
    return ranks


def _launch_variable(name: str, default: int | None, lowest: int, below: int | None = None) -> int:
    """The whole number torchrun put in the environment variable `name` (LaunchError if it
    holds anything else, or is missing without a `default`)."""
    text = os.environ.get(name)
    if text is None and default is not None:
        return default
    what = f"a whole number from {lowest}" + (f" to {below - 1}" if below is not None else " up")
    fix = (
        "these are torchrun's launch variables: unset WORLD_SIZE and RANK to train in one "
        "process, or start several with mnist train --nproc N"
    )
    if text is None:
        raise LaunchError(f"{name} is not set, yet WORLD_SIZE is above 1; {fix}")
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < lowest or (below is not None and value >= below):
        raise LaunchError(f"{name} is {text!r}, not {what}; {fix}")
    return value


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """Each rank on its own GPU; CPU ranks share the CPU. More ranks than GPUs share them
    round-robin (for trying DDP on one GPU; that needs the gloo backend, as nccl refuses)."""
    if device.type == "cuda" and ranks.enabled:
        index = ranks.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def all_reduce_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Element-wise sums over ranks (identity in one process)."""
    if not dist.is_initialized():
        return list(values)
    stacked = torch.stack([value.to(torch.float64) for value in values])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return list(stacked)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_objects(value) -> list:
    """Every rank's `value`, in rank order (a one-item list in one process)."""
    if not dist.is_initialized():
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def process_limit(device_setting: str, backend: str) -> tuple[int, str]:
    """How many processes this machine runs usefully, and of what: one per GPU with nccl,
    else (gloo, CPU, or ranks sharing GPUs) one per CPU core this process may use."""
    from mnist_classifier.device import resolve_device

    if resolve_device(device_setting).type == "cuda" and backend != "gloo":
        return torch.cuda.device_count(), "GPUs"
    return len(os.sched_getaffinity(0)), "CPU cores"


def check_process_count(nproc: int, device_setting: str, backend: str, force: bool) -> None:
    """Refuse more processes than `process_limit`, unless forced."""
    limit, what = process_limit(device_setting, backend)
    if nproc > limit and not force:
        raise LaunchError(
            f"--nproc {nproc} is more than the {limit} {what} here; use --nproc {limit} "
            "or fewer, or add --force to launch them anyway"
        )


@dataclass(frozen=True)
class RankLaunch:
    """What `mnist train --nproc N` resolved, handed to every rank as it is: no rank parses
    the command line or the config file again."""

    config: dict  # the resolved TrainConfig, as to_dict() writes it
    quiet: bool = False
    force: bool = False
    resume: str | None = None  # a checkpoint path, or "auto"
    # A resumed run continues with its own saved config under the settings given now: the
    # --config file and the flags, as dotted keys.
    config_file: str | None = None
    explicit: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path | str) -> RankLaunch:
        return cls(**json.loads(Path(path).read_text()))


def launch_ranks(nproc: int, launch: RankLaunch, rank_command: str) -> int:
    """Start `nproc` ranks under torchrun, each running `mnist <rank_command> LAUNCH_FILE` on
    `launch` written to a temporary file; returns torchrun's exit code.

    LaunchError, before anything starts, if `nproc` is more than `process_limit` (unforced)."""
    settings = launch.config
    check_process_count(nproc, settings["device"], settings["distributed_backend"], launch.force)
    with tempfile.TemporaryDirectory(prefix="mnist-launch-") as folder:
        launch_file = Path(folder) / "launch.json"
        launch_file.write_text(json.dumps(asdict(launch)))
        return launch_with_torchrun(nproc, [rank_command, str(launch_file)])


def launch_with_torchrun(nproc: int, arguments: list[str]) -> int:
    """torchrun --nproc-per-node N -m mnist_classifier ARGUMENTS..., through
    mnist_classifier.torchrun: the ranks' own lines say what went wrong, without torchrun's
    warnings, failure table and traceback around them."""
    command = [
        sys.executable,
        "-m",
        "mnist_classifier.torchrun",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mnist_classifier",
        *arguments,
    ]
    return run_leaving_no_process(command)


def run_leaving_no_process(command: list[str]) -> int:
    """Run `command` (torchrun) and return its exit code; no process it started outlives it.

    torchrun starts each worker in a session of its own, so a torchrun that dies (killed,
    out of memory) leaves its workers running, about 1 GB each. On Linux this process
    becomes their "subreaper": orphans are re-parented to it instead of to init, and those
    carrying this launch's token are stopped once torchrun has exited.
    """
    token = secrets.token_hex(8)
    _become_subreaper()
    process = subprocess.Popen(command, env={**os.environ, LAUNCH_TOKEN_VARIABLE: token})
    try:
        return process.wait()
    except BaseException:
        # SIGTERM lets torchrun stop its workers; SIGKILL (subprocess.call's way) orphans them.
        process.terminate()
        try:
            process.wait(timeout=LAUNCHER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    finally:
        _stop_orphans(token)


def _become_subreaper() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _stop_orphans(token: str) -> None:
    """Kill and reap this process's children whose environment carries `token`."""
    marker = f"{LAUNCH_TOKEN_VARIABLE}={token}".encode()
    for pid in _children_of(os.getpid()):
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if marker in environment:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            continue  # it ended on its own meanwhile


def _children_of(parent: int) -> list[int]:
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (command) state ppid ...": the command may hold spaces, so split after ")".
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            children.append(int(stat_file.parent.name))
    return children
