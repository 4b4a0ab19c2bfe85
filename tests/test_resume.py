"""Exact resume: a run killed after epoch k and resumed in a fresh process ends bit-identical."""

import errno
import io
import json
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT
from tensor_states import same_state

from mnist_classifier import train as train_module
from mnist_classifier.checkpoint import TRAINING_LOCK_NAME, CheckpointSaveError, digest_path
from mnist_classifier.config import make_config
from mnist_classifier.resume import ResumeError, find_resume_checkpoint, load_resume_checkpoint
from mnist_classifier.runs import checkpoint_to_resume
from mnist_classifier.train import TrainingDiverged, TrainingObserver, train

# Every train() here, and in the worker, reads tiny synthetic data: exactness needs no MNIST.
pytestmark = pytest.mark.usefixtures("synthetic_data")
EPOCHS = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")  # never read: the data is synthetic


def _settings(data_dir, output_dir, **overrides):
    return {
        "epochs": EPOCHS,
        "batch_size": 64,
        "data.max_train_images": 384,
        "data.validation_size": 300,
        "data.data_dir": str(data_dir),
        "output_dir": str(output_dir),
        "device": "cpu",
        "schedule.name": "onecycle",  # a schedule whose state matters
        **overrides,
    }


def _worker(settings, record, *arguments):
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tests" / "resume_worker.py"),
            json.dumps(settings),
            str(record),
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    return torch.load(record, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    record = _worker(_settings(data_dir, folder / "checkpoints"), folder / "record.pt")
    return folder / "checkpoints", record


@pytest.mark.parametrize("killed_after", [1, 2, 3])
def test_resume_in_a_fresh_process_is_bit_identical(
    data_dir, tmp_path, uninterrupted, killed_after
):
    full_dir, full = uninterrupted
    # The state a run killed after epoch k leaves behind: its checkpoints up to k.
    resumed_dir = tmp_path / "checkpoints"
    resumed_dir.mkdir()
    for epoch in range(1, killed_after + 1):
        for path in (full_dir / f"checkpoint_epoch_{epoch}.pt",):
            shutil.copy(path, resumed_dir / path.name)
            shutil.copy(digest_path(path), digest_path(resumed_dir / path.name))
    resume_from = resumed_dir / f"checkpoint_epoch_{killed_after}.pt"

    resumed = _worker(
        _settings(data_dir, resumed_dir), tmp_path / "record.pt", "--resume", str(resume_from)
    )

    steps_per_epoch = len(full["losses"]) // EPOCHS
    assert resumed["losses"] == full["losses"][killed_after * steps_per_epoch :]
    assert all(map(torch.equal, resumed["orders"], full["orders"][killed_after:]))
    assert same_state(resumed["model"], full["model"])
    assert same_state(resumed["optimizer"], full["optimizer"])


def test_without_the_random_state_restore_the_resume_would_differ(
    data_dir, tmp_path, uninterrupted
):
    full_dir, full = uninterrupted
    resumed_dir = tmp_path / "checkpoints"
    resumed_dir.mkdir()
    source = full_dir / "checkpoint_epoch_2.pt"
    shutil.copy(source, resumed_dir / source.name)
    shutil.copy(digest_path(source), digest_path(resumed_dir / source.name))

    resumed = _worker(
        _settings(data_dir, resumed_dir),
        tmp_path / "record.pt",
        "--resume",
        str(resumed_dir / source.name),
        "--no-rng-restore",
    )
    assert not all(map(torch.equal, resumed["orders"], full["orders"][2:]))
    assert not same_state(resumed["model"], full["model"])


def test_resume_refuses_a_changed_batch_size_unless_forced(data_dir, tmp_path, uninterrupted):
    full_dir, _ = uninterrupted
    checkpoint = load_resume_checkpoint(full_dir / "checkpoint_epoch_1.pt")
    changed = make_config(_settings(data_dir, tmp_path, batch_size=32))
    with pytest.raises(ResumeError, match="batch_size 64 -> 32.*--force"):
        train(changed, resume_from=checkpoint)
    other_seed = make_config(_settings(data_dir, tmp_path, seed=9))
    with pytest.raises(ResumeError, match="seed 1 -> 9"):
        train(other_seed, resume_from=checkpoint)
    result = train(
        make_config(_settings(data_dir, tmp_path, epochs=2, **{"schedule.name": "none"})),
        resume_from=checkpoint,
        force=True,
    )
    assert [epoch.epoch for epoch in result.epochs] == [1, 2]


def test_auto_picks_the_newest_valid_checkpoint_and_says_what_it_skipped(tmp_path, uninterrupted):
    full_dir, _ = uninterrupted
    for path in full_dir.glob("checkpoint_epoch_*"):
        shutil.copy(path, tmp_path / path.name)
    newest = tmp_path / f"checkpoint_epoch_{EPOCHS}.pt"
    content = bytearray(newest.read_bytes())
    content[len(content) // 2] ^= 0xFF
    newest.write_bytes(bytes(content))

    chosen, skipped = find_resume_checkpoint(tmp_path)
    assert chosen.path == tmp_path / f"checkpoint_epoch_{EPOCHS - 1}.pt"
    assert len(skipped) == 1 and "does not match its digest" in skipped[0]

    for path in tmp_path.glob("checkpoint_epoch_*.pt"):
        path.write_bytes(b"garbage")
    with pytest.raises(ResumeError, match="no valid checkpoint"):
        find_resume_checkpoint(tmp_path)
    assert find_resume_checkpoint(tmp_path / "empty") == (None, [])


class _Steps(TrainingObserver):
    """The optimizer steps of the run, as they are taken."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def batch_done(self, epoch, images_seen, images_total, loss, correct, step=0, lr=0.0):
        self.steps.append(step)


def _loss_not_a_number_from_call(monkeypatch, first: int) -> None:
    """From the `first`-th call of the loss on (steps and validation batches alike), NaN."""
    calls = {"count": 0}
    real_cross_entropy = F.cross_entropy

    def not_a_number_from_then_on(logits, labels, **kwargs):
        calls["count"] += 1
        loss = real_cross_entropy(logits, labels, **kwargs)
        return loss * float("nan") if calls["count"] >= first else loss

    monkeypatch.setattr(train_module.F, "cross_entropy", not_a_number_from_then_on)


def test_on_the_cpu_a_loss_that_is_not_a_number_ends_the_epoch_at_once(
    data_dir, tmp_path, monkeypatch
):
    _loss_not_a_number_from_call(monkeypatch, 3)  # the third step
    config = make_config(_settings(data_dir, tmp_path))  # 6 steps an epoch
    taken = _Steps()
    with pytest.raises(TrainingDiverged, match="diverged in epoch 1: training loss nan"):
        train(config, taken)
    assert taken.steps == [1, 2, 3]  # not the epoch's other 3 steps
    assert not list(tmp_path.glob("*.pt"))


def test_a_nan_loss_stops_training_and_never_becomes_the_best(data_dir, tmp_path, monkeypatch):
    _loss_not_a_number_from_call(monkeypatch, 8)  # the second epoch: 6 steps + 1 validation
    config = make_config(_settings(data_dir, tmp_path, **{"schedule.name": "none"}))
    with pytest.raises(TrainingDiverged, match="diverged in epoch 2"):
        train(config)
    assert sorted(path.name for path in tmp_path.glob("*.pt")) == [
        "best_model.pt",
        "checkpoint_epoch_1.pt",
    ]
    best = torch.load(tmp_path / "best_model.pt", weights_only=True)
    assert best["epoch"] == 1
    assert all(torch.isfinite(tensor).all() for tensor in best["model_state_dict"].values())


class _FullDisk(io.RawIOBase):
    """A file that takes its first 4 KiB and then fails as a full disk does."""

    def __init__(self, handle):
        self.handle, self.written = handle, 0

    def writable(self):
        return True

    def write(self, data):
        self.written += len(data)
        if self.written > 4096:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.handle.write(data)


@pytest.mark.parametrize("where", ["in torch.save", "under torch.save's own zip writer"])
def test_a_full_disk_stops_the_run_and_leaves_earlier_checkpoints_intact(
    data_dir, tmp_path, monkeypatch, where
):
    from mnist_classifier import checkpoint as checkpoint_module

    config = make_config(_settings(data_dir, tmp_path, **{"schedule.name": "none"}))
    real_save = torch.save
    saves = {"count": 0}
    before = {}

    def disk_fills_up_at_the_third_save(payload, handle):
        saves["count"] += 1
        if saves["count"] <= 2:  # epoch 1: best_model.pt and checkpoint_epoch_1.pt
            real_save(payload, handle)
            return
        # What is on disk now, but for this save's own temporary, must survive untouched.
        before.update(
            {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")}
        )
        if where == "in torch.save":
            handle.write(b"partial bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(payload, _FullDisk(handle))  # torch raises its own RuntimeError for this

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_fills_up_at_the_third_save)
    with pytest.raises(CheckpointSaveError, match="no space left on the device"):
        train(config)
    # The folder's training lock stays (empty, and free once the run ended).
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != TRAINING_LOCK_NAME}
    assert len(before) == 4  # two checkpoints and their digests
    assert after == before  # byte-identical, and no temporary left behind


def test_keep_last_deletes_old_epochs_but_never_the_best(data_dir, tmp_path):
    config = make_config(
        _settings(data_dir, tmp_path, keep_last=1, lr=1e-12, **{"schedule.name": "none"})
    )
    train(config)  # a flat run: epoch 1 stays the best
    assert sorted(path.name for path in tmp_path.glob("checkpoint_epoch_*.pt")) == [
        "checkpoint_epoch_1.pt",
        f"checkpoint_epoch_{EPOCHS}.pt",
    ]
    assert not (tmp_path / "checkpoint_epoch_2.pt.sha256").exists()


@pytest.mark.parametrize("resume", ["", "  "])
def test_an_empty_resume_is_a_usage_error_not_a_fresh_run(tmp_path, resume):
    from typer.testing import CliRunner

    from mnist_classifier.cli import app

    runs_dir = tmp_path / "runs"
    arguments = ["train", "--resume", resume, "--runs-dir", str(runs_dir), "--device", "cpu"]
    result = CliRunner().invoke(app, [*arguments, "--data-dir", str(tmp_path), "--quiet"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("error: ") and "--resume" in line and "empty value" in line
    assert not runs_dir.exists()  # nothing trained, no run folder
    with pytest.raises(ResumeError, match="empty value"):
        checkpoint_to_resume(resume, make_config(_settings(tmp_path, tmp_path)))
