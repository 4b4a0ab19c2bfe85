"""Data-parallel training with torchrun on CPU (gloo): two real processes on a real subset."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from typer.testing import CliRunner

from mnist_classifier.batching import Ranks, shard
from mnist_classifier.checkpoint import load_checkpoint
from mnist_classifier.config import make_config
from mnist_classifier.distributed import _children_of
from mnist_classifier.train import train

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_shards_cover_every_index_once_padded_evenly():
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    shards = [shard(order, Ranks(rank, 3)) for rank in range(3)]
    assert [len(part) for part in shards] == [4, 4, 4]  # 11 padded to 12
    seen = torch.cat(shards).tolist()
    assert sorted(set(seen)) == list(range(11)) and len(seen) == 12
    assert torch.equal(shard(order, Ranks()), order)


def _settings(mnist_dir, output_dir, **overrides):
    return {
        "epochs": 2,
        "batch_size": 32,
        "data.max_train_images": 1024,
        "data.validation_size": 500,
        "data.data_dir": str(mnist_dir),
        "output_dir": str(output_dir),
        "device": "cpu",
        **overrides,
    }


def _torchrun(settings, out_dir, *extra, timeout=240):
    out_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(REPO_ROOT / "tests" / "ddp_worker.py"),
            json.dumps(settings),
            str(out_dir),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def two_rank_run(mnist_dir, tmp_path_factory):
    """One 2-epoch run of two ranks, shared: its per-rank weights and its checkpoints."""
    out_dir = tmp_path_factory.mktemp("two-ranks")
    completed = _torchrun(_settings(mnist_dir, out_dir / "checkpoints"), out_dir)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out_dir


def test_two_ranks_train_identical_weights_and_write_one_checkpoint(two_rank_run):
    rank0 = torch.load(two_rank_run / "rank0.pt", weights_only=True)
    rank1 = torch.load(two_rank_run / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)

    checkpoints = sorted(path.name for path in (two_rank_run / "checkpoints").iterdir())
    assert checkpoints == [
        ".mnist-training.lock",  # rank 0's hold on the folder; the file outlives the lock
        "best_model.pt",
        "best_model.pt.sha256",
        "checkpoint_epoch_1.pt",
        "checkpoint_epoch_1.pt.sha256",
        "checkpoint_epoch_2.pt",
        "checkpoint_epoch_2.pt.sha256",
    ]
    # Saved once, from the unwrapped model: it loads in a single process like any other.
    loaded = load_checkpoint(two_rank_run / "checkpoints" / "checkpoint_epoch_2.pt")
    assert not any(key.startswith("module.") for key in loaded.model_state_dict)
    assert all(torch.equal(loaded.model.state_dict()[key], rank0[key]) for key in rank0)
    assert loaded.world_size == 2


def test_two_ranks_of_32_match_one_process_of_64(two_rank_run, mnist_dir, tmp_path):
    """Same global batches (the shards interleave one order); only dropout masks differ, so
    the results agree to within a stated tolerance, not bit for bit."""
    single = train(make_config(_settings(mnist_dir, tmp_path / "single", batch_size=64)))
    distributed = load_checkpoint(two_rank_run / "checkpoints" / "checkpoint_epoch_2.pt")
    single_accuracy = single.epochs[-1].validation_accuracy
    assert abs(distributed.validation_accuracy - single_accuracy) <= 0.03
    assert distributed.train_loss == pytest.approx(single.epochs[-1].train_loss, rel=0.1)


def test_a_failing_rank_fails_the_job_and_names_itself(mnist_dir, tmp_path):
    start = time.monotonic()
    completed = _torchrun(
        _settings(mnist_dir, tmp_path / "checkpoints"), tmp_path, "--fail-rank", "1", timeout=180
    )
    assert completed.returncode != 0
    assert "injected failure on rank 1" in completed.stderr
    # torchrun's own summary names the rank that failed first, and ends the others.
    assert re.search(r"Root Cause.*?rank\s*:\s*1 \(local_rank: 1\)", completed.stderr, re.S)
    assert time.monotonic() - start < 150  # failed, did not hang


def test_mnist_train_nproc_and_resume_under_ddp_is_bit_identical(two_rank_run, mnist_dir, tmp_path):
    """1 epoch of `mnist train --nproc 2`, then `--resume auto` to 2, ends on the weights of
    the straight 2-epoch run of the same settings: each rank's dropout and the shared batch
    order continue where they stopped, and the CLI's ranks train as train() under torchrun."""
    settings = _settings(mnist_dir, "unused")
    arguments = [
        "--nproc",
        "2",
        "--batch-size",
        str(settings["batch_size"]),
        "--max-train-images",
        str(settings["data.max_train_images"]),
        "--validation-size",
        str(settings["data.validation_size"]),
        "--device",
        "cpu",
        "--data-dir",
        str(mnist_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--quiet",
        "--name",
        "ddp",
    ]
    command = [sys.executable, "-m", "mnist_classifier", "train", *arguments]
    first = subprocess.run([*command, "--epochs", "1"], capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = subprocess.run(
        [*command, "--epochs", "2", "--resume", "auto"], capture_output=True, text=True, timeout=240
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()  # rank 1 made no run directory of its own
    resumed_checkpoint = load_checkpoint(run_dir / "checkpoint_epoch_2.pt")
    assert resumed_checkpoint.world_size == 2

    straight = load_checkpoint(two_rank_run / "checkpoints" / "checkpoint_epoch_2.pt")
    expected, resumed_weights = straight.model.state_dict(), resumed_checkpoint.model.state_dict()
    assert all(torch.equal(resumed_weights[key], expected[key]) for key in expected)


def _mnist_train_nproc_2(mnist_dir, runs_dir, *arguments) -> list[str]:
    """`mnist train --nproc 2` on the CPU, as a person types it (python -m: the same command)."""
    return [
        sys.executable,
        "-m",
        "mnist_classifier",
        "train",
        "--nproc",
        "2",
        "--device",
        "cpu",
        "--data-dir",
        str(mnist_dir),
        "--runs-dir",
        str(runs_dir),
        "--quiet",
        *arguments,
    ]


def test_a_rank_that_fails_under_nproc_leaves_its_own_line_and_no_traceback(mnist_dir, tmp_path):
    """torchrun reported a failed rank with warnings, a failure table and its own traceback."""
    command = _mnist_train_nproc_2(mnist_dir, tmp_path / "runs", "--lr", "1e10")
    failed = subprocess.run(
        [*command, "--epochs", "1", "--max-train-images", "1024", "--validation-size", "500"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert failed.returncode == 1, failed.stderr[-3000:]
    lines = failed.stderr.splitlines()
    assert all(line.startswith("error: ") for line in lines), failed.stderr[-3000:]
    # Both ranks see the same summed loss diverge: rank 0 alone says so.
    diverged = [line for line in lines if "training diverged" in line]
    assert len(diverged) == 1 and diverged[0].startswith("error: rank 0: training diverged in")
    assert lines[-1].startswith("error: distributed training failed (torchrun exit code 1)")


def _descendants(pid: int) -> set[int]:
    """The processes below `pid`: its children (as the launcher finds its own), theirs, ..."""
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for parent in frontier for child in _children_of(parent)} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_to_mnist_train_nproc_stops_torchrun_and_its_ranks(mnist_dir, tmp_path):
    """SIGTERM (a scheduler's end of time, docker stop) ended `mnist train --nproc` at once and
    left torchrun and its ranks training on, about 1 GB each."""
    command = _mnist_train_nproc_2(mnist_dir, tmp_path / "runs", "--epochs", "5")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(started := _descendants(process.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)  # torchrun, then its two ranks
        assert len(started) >= 3, "torchrun did not start two ranks"
        time.sleep(2)  # the ranks under way
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr[-3000:]
    assert stderr.splitlines()[-1].startswith("error: terminated: the ranks were stopped")
    assert "Traceback" not in stderr
    assert not [pid for pid in started if _running(pid)]


def test_a_rank_killed_without_a_word_gets_one_line_from_the_launcher(tmp_path):
    """A rank the kernel kills (out of memory) cannot say why: the launcher's line does."""
    script = tmp_path / "killed.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    completed = subprocess.run(
        [sys.executable, "-m", "mnist_classifier.torchrun", "--standalone", "--nproc-per-node=1"]
        + [str(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert completed.stderr.splitlines() == [
        "error: rank 0 was killed by SIGKILL (the kernel ends a process so when memory runs out)"
    ]
