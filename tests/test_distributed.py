"""Data-parallel training with torchrun on CPU (gloo): two real processes on a real subset."""

import json
import re
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO_ROOT
from typer.testing import CliRunner

from mnist_classifier.batching import Ranks, shard
from mnist_classifier.checkpoint import load_checkpoint
from mnist_classifier.config import make_config
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
