"""Bad input, special files and bombs: each gets one clear outcome, and nothing is lost.

One test per failure found by trying every command the way a careless user or an attacker
would (issue 13); each is named after what it protects.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml
from conftest import checkpoint_payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mnist_classifier import train as train_module
from mnist_classifier.checkpoint import (
    TEMPORARY_PREFIX,
    TEMPORARY_SUFFIX,
    CheckpointError,
    digest_path,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from mnist_classifier.cli import app
from mnist_classifier.config import (
    MAX_SHOWN_VALUE_CHARS,
    ConfigError,
    TrainConfig,
    load_config,
    parse_assignment,
)
from mnist_classifier.data import RAW_SIZES, DataError, ensure_mnist
from mnist_classifier.distributed import launch_rank, run_leaving_no_process
from mnist_classifier.files import json_object_if_regular
from mnist_classifier.model import SimpleCNN
from mnist_classifier.registry import (
    MODEL_CARD_NAME,
    RegistryError,
    _append_history,
    list_models,
    promote,
    read_history,
)
from mnist_classifier.resume import ResumeError, rng_states
from mnist_classifier.runs import find_resume_in_runs
from mnist_classifier.serve.loading import ServeError, load_checkpoint_model
from mnist_classifier.train import TRAINING_BYTES_PER_IMAGE, EpochResult

runner = CliRunner()


def _finishes_within(seconds: float, function) -> object:
    """Run `function` in a thread; fail (instead of hanging the suite) if it does not return."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the test to inspect
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: it hangs"
    return outcome


def _one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


def _resumable_payload(**changes) -> dict:
    """A checkpoint that holds everything an exact resume needs; `changes` spoil parts of it."""
    record = dataclasses.asdict(
        EpochResult(
            epoch=3,
            learning_rate=1e-3,
            train_loss=0.5,
            train_accuracy=0.8,
            validation_loss=0.05,
            validation_accuracy=0.985,
            seconds=1.0,
            images_per_second=64.0,
            checkpoint=Path("checkpoint_epoch_3.pt"),
            is_best=True,
        )
    )
    record["checkpoint"] = str(record["checkpoint"])
    payload = checkpoint_payload(
        rng_state=rng_states(torch.Generator()),
        history=[record],
        global_step=3,
        early_stopping=[0.985, 0],
    )
    payload.update(changes)
    return payload


# --- 1. --resume auto never silently starts from scratch ---------------------------------------


def test_resume_auto_skips_newer_runs_without_a_valid_checkpoint(tmp_path):
    older = tmp_path / "20260101-000000-rz"
    save_checkpoint(older / "checkpoint_epoch_3.pt", _resumable_payload())
    empty = tmp_path / "20260102-000000-rz"  # a start that failed before its first epoch
    empty.mkdir()
    broken = tmp_path / "20260103-000000-rz"
    save_checkpoint(broken / "checkpoint_epoch_1.pt", _resumable_payload())
    (broken / "checkpoint_epoch_1.pt").write_bytes(b"cut short")

    chosen, notes = find_resume_in_runs([broken, empty, older])

    assert chosen.path == older / "checkpoint_epoch_3.pt"
    assert any(broken.name in note for note in notes)
    assert any(empty.name in note and "no checkpoint" in note for note in notes)
    # Checkpoints exist but none is valid: refused, never a fresh start.
    with pytest.raises(ResumeError, match="no run holds a valid checkpoint"):
        find_resume_in_runs([broken, empty])
    assert find_resume_in_runs([empty]) == (
        None,
        [f"skipped run {empty.name}: it holds no checkpoint"],
    )


def test_mnist_train_resume_auto_says_which_run_it_resumes(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    older = runs_dir / "20260101-000000-rz"
    save_checkpoint(older / "checkpoint_epoch_3.pt", _resumable_payload())
    (older / "config.yaml").write_text("name: rz\n")  # what makes a folder a run's
    (runs_dir / "20260102-000000-rz").mkdir()  # left by a start that failed
    resumed_from = []
    monkeypatch.setattr(
        train_module, "train", lambda *_args, resume_from, **_kw: resumed_from.append(resume_from)
    )
    arguments = ["train", "--name", "rz", "--runs-dir", str(runs_dir), "--resume", "auto"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "skipped run 20260102-000000-rz: it holds no checkpoint" in result.output
    assert f"Resuming from {older / 'checkpoint_epoch_3.pt'} (run {older.name})" in result.output
    assert [checkpoint.path for checkpoint in resumed_from] == [older / "checkpoint_epoch_3.pt"]


def test_a_start_that_fails_on_unverified_data_leaves_no_run_folder(tmp_path):
    raw_dir = tmp_path / "data" / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    (raw_dir / "t10k-labels-idx1-ubyte").write_bytes(b"not MNIST")
    runs_dir = tmp_path / "runs"
    result = runner.invoke(
        app,
        [
            "train",
            "--name",
            "rz",
            "--runs-dir",
            str(runs_dir),
            "--data-dir",
            str(tmp_path / "data"),
        ],
    )
    assert result.exit_code == 1 and "not the canonical" in result.output
    assert not runs_dir.exists()  # neither a run folder nor the runs folder made for it


# --- 2. only this project's temporaries are deleted ---------------------------------------------


def test_only_temporaries_our_writer_made_are_removed(tmp_path):
    users = [tmp_path / name for name in (".notes.tmp", ".report.swp.tmp", ".best_model.pt.tmp")]
    for path in users:
        path.write_text("the user's")
    # Named exactly as the checkpoint writer names its temporaries.
    descriptor, ours = tempfile.mkstemp(
        dir=tmp_path, prefix=f"{TEMPORARY_PREFIX}best_model.pt.", suffix=TEMPORARY_SUFFIX
    )
    os.close(descriptor)
    assert remove_stale_temporaries(tmp_path) == [Path(ours)]
    assert all(path.read_text() == "the user's" for path in users)


# --- 3. a promotion record is never lost; odd history files are refused before copying --------


def test_a_history_ending_mid_line_keeps_every_record_on_its_own_line(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_text('{"to": "production"}\n{"time_utc": "2026-01-01T00:00:00", "na')
    _append_history(history, {"to": "staging"})
    records, problems = read_history(history)
    assert records == [{"to": "production"}, {"to": "staging"}]
    assert problems == [f"{history} line 2 is not a JSON record; skipped it"]


def test_history_lines_json_cannot_read_are_skipped_and_named(tmp_path):
    history = tmp_path / "history.jsonl"
    lines = ['{"to": "production"}', '{"n": ' + "9" * 5_000 + "}", "[" * 100_000, '{"to": "x"}']
    history.write_text("\n".join(lines) + "\n")
    records, problems = read_history(history)
    assert records == [{"to": "production"}, {"to": "x"}]
    assert problems == [
        f"{history} line {number} is not a JSON record; skipped it" for number in (2, 3)
    ]


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_history_that_is_not_a_file_is_refused_before_anything_is_copied(tmp_path, kind):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    history = models_dir / "history.jsonl"
    os.mkfifo(history) if kind == "fifo" else history.mkdir()
    outcome = _finishes_within(
        10,
        lambda: promote(
            tmp_path / "candidate.pt",
            models_dir=models_dir,
            name="mnist",
            to_stage="production",
            min_test_accuracy=0.0,
            data_dir=tmp_path / "data",
            from_label="staging",
        ),
    )
    assert isinstance(outcome.get("error"), RegistryError)
    assert "promotion history cannot be used" in str(outcome["error"])
    assert not (models_dir / "production").exists()


# --- 6. a NaN model is refused when loaded ------------------------------------------------------


def test_non_finite_weights_are_refused_when_a_checkpoint_is_loaded(tmp_path):
    model = SimpleCNN()
    with torch.no_grad():
        model.fc2.bias[3] = float("nan")
        model.conv1.weight[0, 0, 0, 0] = float("inf")
    path = tmp_path / "nan.pt"
    save_checkpoint(path, checkpoint_payload(model))
    with pytest.raises(CheckpointError, match=r"non-finite weights .*conv1\.weight, fc2\.bias"):
        load_checkpoint(path)


# --- 7. sidecars, cards and history: regular files only, with a size cap ------------------------


@pytest.mark.parametrize("special", ["fifo", "/dev/urandom", "/dev/zero"])
def test_a_digest_sidecar_that_is_not_a_regular_file_is_refused_without_hanging(tmp_path, special):
    path = tmp_path / "best_model.pt"
    save_checkpoint(path, checkpoint_payload())
    digest_path(path).unlink()
    os.mkfifo(digest_path(path)) if special == "fifo" else digest_path(path).symlink_to(special)
    outcome = _finishes_within(10, lambda: load_checkpoint(path))
    assert isinstance(outcome.get("error"), CheckpointError)
    assert "not a regular file" in str(outcome["error"])


def test_model_cards_that_are_special_or_oversized_are_listed_as_invalid(tmp_path):
    for stage, make_card in (
        ("fifo", lambda card: os.mkfifo(card)),
        ("zero", lambda card: card.symlink_to("/dev/zero")),
        ("huge", lambda card: card.write_text(json.dumps({"pad": "x" * (2 << 20)}))),
    ):
        save_checkpoint(tmp_path / stage / "mnist" / "best_model.pt", checkpoint_payload())
        make_card(tmp_path / stage / "mnist" / MODEL_CARD_NAME)
    outcome = _finishes_within(20, lambda: list_models(tmp_path))
    statuses = {row["stage"]: row["status"] for row in outcome["value"]}
    assert "not a regular file" in statuses["fifo"]
    assert "not a regular file" in statuses["zero"]
    assert "larger than" in statuses["huge"]


@pytest.mark.parametrize(
    "text", ["[" * 100_000, '{"epochs_run": ' + "9" * 5_000 + "}"], ids=["nested", "long number"]
)
def test_a_record_json_cannot_read_is_not_taken_for_ours(tmp_path, text):
    # How resume, evaluate and export tell a summary, report or sidecar of theirs.
    path = tmp_path / "summary.json"
    path.write_text(text)
    assert json_object_if_regular(path, 1 << 20) is None


# --- 8. YAML bombs, long values, duplicate keys -------------------------------------------------


def _alias_bomb(depth: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, depth + 1):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    return "\n".join([*lines, f"lr: *a{depth}"]) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(9))  # 10**10 items if expanded
    assert len(path.read_bytes()) < 600
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"aliases \(\*a0\) are not allowed \(line 2\)"):
        load_config(path)
    assert time.perf_counter() - start < 2


def test_values_quoted_in_errors_are_cut_to_about_80_characters(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({"lr": list(range(3_000))}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith("lr must be of type float (got [0, 1, 2, ")
    assert message.endswith("...)") and len(message) < 40 + MAX_SHOWN_VALUE_CHARS


def test_duplicate_keys_in_a_config_file_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("lr: 0.1\nschedule:\n  name: step\n  name: cosine\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'name' \(line 4\)"):
        load_config(path)


# --- 9. a gzip bomb in the data folder ----------------------------------------------------------


def test_a_gzip_bomb_is_decompressed_no_further_than_the_file_it_claims_to_be(tmp_path):
    raw_dir = tmp_path / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    (raw_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(64 << 20), 9))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="decompresses to more than the 10,008 bytes"):
            ensure_mnist(tmp_path, allow_download=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert RAW_SIZES["t10k-labels-idx1-ubyte"] == 10_008
    assert peak < 8 << 20  # the 64 MiB never lived in memory


# --- 10. --nproc is capped; a failed launch leaves no process -----------------------------------


def test_nproc_above_the_cores_is_refused_unless_forced(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(
        "mnist_classifier.distributed.launch_with_torchrun",
        lambda nproc, arguments: launched.append(nproc) or 0,
    )
    arguments = ["train", "--nproc", "1000", "--device", "cpu", "--runs-dir", str(tmp_path)]
    arguments += ["--batch-size", "32"]  # each of the 1000 processes has 55 images
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    cores = len(os.sched_getaffinity(0))
    line = _one_error_line(result.output)
    assert f"--nproc 1000 is more than the {cores} CPU cores here" in line
    assert launched == []
    assert runner.invoke(app, [*arguments, "--force"]).exit_code == 0
    assert launched == [1000]


def test_a_launcher_that_dies_leaves_no_worker_running(tmp_path):
    pid_file = tmp_path / "worker.pid"
    # Like torchrun: a worker in a session of its own, then the launcher is killed outright.
    dying_launcher = (
        "import os, signal, subprocess, sys;"
        "worker = subprocess.Popen(['sleep', '300'], start_new_session=True);"
        f"open({str(pid_file)!r}, 'w').write(str(worker.pid));"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    code = run_leaving_no_process([sys.executable, "-c", dying_launcher])
    assert code == -9
    worker = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


# --- 11. one line, never a traceback ------------------------------------------------------------


@pytest.fixture
def no_data_is_read(monkeypatch):
    """Fails the test if training gets as far as reading the data."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("data was read before the setting was checked")

    monkeypatch.setattr(train_module, "ensure_dataset", refuse)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--config", "{latin1}"], "is not UTF-8 text"),
        (["--data-dir", "{file}"], "is a file, not a folder"),
        (["--name", "n" * 300], "name must be at most 100 characters"),
        (["--set", "schedule.warmup_epochs=.inf"], "warmup_epochs must be a finite number"),
        (["--set", "seed=99999999999999999999999"], "seed must fit in 64 bits"),
        (["--runs-dir", "{file}/runs"], "runs_dir '"),
    ],
)
def test_bad_settings_give_one_line_and_exit_2_before_any_data_is_read(
    tmp_path, no_data_is_read, arguments, message
):
    latin1, blocker = tmp_path / "latin1.yaml", tmp_path / "a-file"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    blocker.write_text("")
    filled = [argument.format(latin1=latin1, file=blocker) for argument in arguments]
    runs_dir = ["--runs-dir", str(tmp_path / "runs")] if "--runs-dir" not in arguments else []
    result = runner.invoke(app, ["train", *runs_dir, *filled])
    assert result.exit_code == 2
    assert message in _one_error_line(result.output)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epoch": "five"}, "epoch must be a whole number of at least 1 (got 'five')"),
        ({"loss": "low"}, "loss must be a number (got 'low')"),
        ({"model_state_dict": [1, 2]}, "model_state_dict must be a mapping of names to tensors"),
    ],
)
def test_a_retrusted_foreign_checkpoint_with_wrong_value_types_is_one_line(
    tmp_path, change, message
):
    path = tmp_path / "foreign.pt"
    save_checkpoint(path, checkpoint_payload(**change))  # digest re-trusted: only types differ
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(path)])
    assert result.exit_code == 1
    assert message in _one_error_line(result.output)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rng_state": None}, "it holds no random-number state"),
        ({"history": []}, "its epoch history is empty"),
        (
            {"optimizer_state_dict": {"state": {}, "param_groups": []}},
            "its optimizer state is damaged",
        ),
    ],
)
def test_resume_force_refuses_a_checkpoint_without_usable_training_state_before_reading_data(
    tmp_path, no_data_is_read, change, message
):
    path = tmp_path / "checkpoint_epoch_3.pt"
    save_checkpoint(path, _resumable_payload(**change))
    result = runner.invoke(
        app, ["train", "--resume", str(path), "--force", "--runs-dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 2
    assert message in _one_error_line(result.output)
    assert not (tmp_path / "runs").exists()  # no run folder, nor the runs folder it would go in


# What `mnist promote` writes, in part: what `mnist models` shows and `mnist serve` sends.
GOOD_CARD = {
    "promoted_utc": "2026-01-01T00:00:00+00:00",
    "metrics": {"test_accuracy": 0.991, "test_loss": 0.03},
}
DAMAGED_CARDS = [
    ('{"metrics": {"test_acc', "is not valid JSON (Unterminated string"),
    ("[1, 2]", "holds a JSON list, not a record"),
    ("null", "holds a JSON NoneType, not a record"),
    ("[" * 100_000, "is not valid JSON (nested too deeply)"),
    ('{"epoch": ' + "9" * 5_000 + "}", "holds a number too long to read"),
    ('{"metrics": {"test_accuracy": "high"}}', "metrics.test_accuracy is 'high', not a number"),
    ('{"metrics": {"test_accuracy": true}}', "metrics.test_accuracy is True, not a number"),
    ('{"metrics": {"test_accuracy": null}}', "metrics.test_accuracy is None, not a number"),
    ('{"metrics": {"test_accuracy": [0.99]}}', "metrics.test_accuracy is [0.99], not a number"),
    # Beyond a float's range: formatting it as a percentage would overflow.
    ('{"metrics": {"test_accuracy": 1' + "0" * 400 + "}}", "metrics.test_accuracy is 1000"),
    ('{"metrics": {"test_loss": {"value": 0.03}}}', "metrics.test_loss is {'value': 0.03}, not"),
    # Numbers no promotion writes: a percentage where a fraction belongs, NaN, Infinity.
    ('{"metrics": {"test_accuracy": 99.1}}', "test_accuracy is 99.1, not a number from 0 to 1"),
    ('{"metrics": {"test_accuracy": -0.5}}', "test_accuracy is -0.5, not a number from 0 to 1"),
    ('{"metrics": {"test_accuracy": NaN}}', "test_accuracy is nan, not a number from 0 to 1"),
    ('{"metrics": {"test_loss": Infinity}}', "metrics.test_loss is inf, not a number"),
    ('{"metrics": [1]}', "metrics is [1], not a JSON object"),
    ('{"metrics": null}', "metrics is None, not a JSON object"),
    ('{"metrics": "0.99"}', "metrics is '0.99', not a JSON object"),
    ('{"promoted_utc": 20260101}', "promoted_utc is 20260101, not text"),
    ('{"promoted_utc": false}', "promoted_utc is False, not text"),
    ('{"promoted_utc": ["2026-01-01"]}', "promoted_utc is ['2026-01-01'], not text"),
]


def _registry_with_a_card(models_dir: Path, card_text: str) -> Path:
    """staging and production stages; staging with a good card, production with `card_text`."""
    for stage in ("staging", "production"):
        save_checkpoint(models_dir / stage / "mnist" / "best_model.pt", checkpoint_payload())
    (models_dir / "staging" / "mnist" / MODEL_CARD_NAME).write_text(json.dumps(GOOD_CARD))
    card = models_dir / "production" / "mnist" / MODEL_CARD_NAME
    card.write_text(card_text)
    return card


@pytest.mark.parametrize(("card_text", "message"), DAMAGED_CARDS)
def test_mnist_models_names_a_damaged_card_in_one_line_and_still_lists_every_stage(
    tmp_path, card_text, message
):
    card = _registry_with_a_card(tmp_path, card_text)
    result = runner.invoke(app, ["models", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (error,) = result.stderr.splitlines()
    assert error.startswith(f"error: production/mnist: invalid model card: {card}")
    assert message in error and error.endswith("; repair it or move it aside")
    rows = result.stdout.splitlines()
    assert any("staging" in row and "99.10%" in row and " ok " in row for row in rows)
    assert any("production" in row and "invalid model card" in row for row in rows)
    assert card.read_text() == card_text  # reported, never rewritten


@pytest.mark.parametrize(("card_text", "message"), DAMAGED_CARDS)
def test_serving_a_stage_with_a_damaged_card_is_refused_in_one_line(tmp_path, card_text, message):
    card = _registry_with_a_card(tmp_path, card_text)
    with pytest.raises(ServeError) as refused:
        load_checkpoint_model(card.parent / "best_model.pt", stage="production")
    assert str(refused.value).startswith(f"{card}") and message in str(refused.value)
    assert "\n" not in str(refused.value)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["metrics", "test_accuracy", "test_loss", "promoted_utc"])
            | st.text(max_size=5),
            inner,
            max_size=4,
        )
    ),
    max_leaves=8,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    card=st.fixed_dictionaries(
        {}, optional={"metrics": JSON_VALUES, "promoted_utc": JSON_VALUES, "epoch": JSON_VALUES}
    )
    | st.fixed_dictionaries(
        {"metrics": st.fixed_dictionaries({"test_accuracy": JSON_VALUES, "test_loss": JSON_VALUES})}
    )
    | JSON_VALUES
)
def test_any_model_card_is_listed_or_named_in_one_line(tmp_path_factory, card):
    models_dir = tmp_path_factory.mktemp("models")
    card_path = _registry_with_a_card(models_dir, json.dumps(card))

    result = runner.invoke(app, ["models", "--models-dir", str(models_dir)])

    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    rows = result.stdout.splitlines()
    assert any("staging" in row and " ok " in row for row in rows)
    assert any("production" in row for row in rows)
    if result.exit_code == 0:  # the card happened to be a usable one
        assert result.stderr == ""
    else:
        assert result.exit_code == 2
        (error,) = result.stderr.splitlines()
        assert error.startswith(f"error: production/mnist: invalid model card: {card_path}")


def test_save_preprocessed_under_a_file_is_one_line_before_any_prediction(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(
        app, ["predict", str(tmp_path / "digit.png"), "--save-preprocessed", str(blocker / "out")]
    )
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert "save_preprocessed" in line and "--save-preprocessed" in line


# --- 12. small ones -----------------------------------------------------------------------------


def test_exponent_floats_without_a_dot_are_numbers():
    assert parse_assignment("lr=1e-4") == ("lr", 1e-4)
    assert load_config(None, dict([parse_assignment("lr=2E-3")])).lr == 2e-3
    assert parse_assignment("epochs=3") == ("epochs", 3)  # ints stay ints


@pytest.mark.parametrize("assignment", ["epochs=", "epochs=null", "epochs=~"])
def test_a_set_without_a_value_is_refused_not_ignored(assignment):
    with pytest.raises(ConfigError, match="--set epochs has no value"):
        parse_assignment(assignment)


def test_a_symlink_loop_is_named_as_such(tmp_path):
    loop = tmp_path / "loop.pt"
    loop.symlink_to(loop)
    with pytest.raises(CheckpointError, match="a broken link or a symlink loop"):
        load_checkpoint(loop)


def test_a_runs_dir_error_is_labelled_runs_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    arguments = ["train", "--runs-dir", str(blocker / "runs"), "--output-dir", str(tmp_path / "m")]
    line = _one_error_line(runner.invoke(app, arguments).output)
    assert line.startswith("error: runs_dir ") and "--runs-dir" in line


# --- 13. a batch larger than the training set is refused before any work ----------------------


@pytest.fixture
def nothing_is_launched(monkeypatch):
    """Fails the test if torchrun would be started."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("ranks were launched before the setting was checked")

    monkeypatch.setattr("mnist_classifier.distributed.launch_with_torchrun", refuse)


@pytest.mark.parametrize(
    ("arguments", "config_text", "message"),
    [
        (
            ["--batch-size", "100000"],
            "",
            "batch_size 100000 is more than the 55000 training images; "
            "choose at most 55000 with --batch-size",
        ),
        (["--set", "batch_size=55001"], "", "batch_size 55001 is more than the 55000 training"),
        (
            ["--max-train-images", "500", "--set", "batch_size=501"],
            "",
            "batch_size 501 is more than the 500 training images; choose at most 500",
        ),
        (["--config", "{config}"], "batch_size: 55001\n", "is more than the 55000 training"),
        (
            ["--config", "{config}"],
            "batch_size: 50001\ndata:\n  validation_size: 10000\n",
            "batch_size 50001 is more than the 50000 training images",
        ),
        (
            ["--dataset", "fashion-mnist", "--batch-size", "55001"],
            "",
            "is more than the 55000 training images",
        ),
        (
            ["--nproc", "2", "--device", "cpu", "--batch-size", "27501"],
            "",
            "batch_size 27501 is more than the 27500 training images each of the 2 processes "
            "trains on; choose at most 27500 with --batch-size",
        ),
    ],
)
def test_a_batch_larger_than_the_training_images_is_one_line_before_any_work(
    tmp_path, no_data_is_read, nothing_is_launched, arguments, config_text, message
):
    config = tmp_path / "big-batch.yaml"
    config.write_text(config_text)
    runs_dir = tmp_path / "runs"
    filled = [argument.format(config=config) for argument in arguments]
    result = runner.invoke(app, ["train", "--runs-dir", str(runs_dir), *filled])
    assert result.exit_code == 2
    assert message in _one_error_line(result.output)
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("train_images", "free_bytes"),
    [
        ("64", None),  # a batch of all the training images
        ("128", 64 * TRAINING_BYTES_PER_IMAGE),  # a batch that just fits in the memory free
    ],
)
def test_a_batch_at_its_limit_trains(
    tmp_path, monkeypatch, synthetic_data, train_images, free_bytes
):
    if free_bytes is not None:
        monkeypatch.setattr("mnist_classifier.train.available_memory_bytes", lambda: free_bytes)
    runs_dir = tmp_path / "runs"
    tiny = ["--max-train-images", train_images, "--validation-size", "64", "--device", "cpu"]
    arguments = ["train", *tiny, "--epochs", "1", "--runs-dir", str(runs_dir), "--quiet"]
    result = runner.invoke(app, [*arguments, "--batch-size", "64"])
    assert result.exit_code == 0, result.output
    (run_dir,) = runs_dir.iterdir()
    assert (run_dir / "best_model.pt").is_file()


def test_force_with_a_batch_too_large_keeps_the_earlier_checkpoints(tmp_path, no_data_is_read):
    output_dir = tmp_path / "models"
    for name in ("best_model.pt", "checkpoint_epoch_1.pt"):
        save_checkpoint(output_dir / name, checkpoint_payload())
    before = {path.name: path.read_bytes() for path in output_dir.iterdir()}
    arguments = ["train", "--output-dir", str(output_dir), "--runs-dir", str(tmp_path / "runs")]
    result = runner.invoke(app, [*arguments, "--force", "--batch-size", "100000"])
    assert result.exit_code == 2
    assert "batch_size 100000 is more than" in _one_error_line(result.output)
    assert {path.name: path.read_bytes() for path in output_dir.iterdir()} == before


def test_resuming_into_a_batch_larger_than_the_training_images_is_one_line(
    tmp_path, no_data_is_read
):
    # The run's own batch_size (128) comes from its checkpoint; only the resumed config,
    # with the fewer images asked for now, has a batch larger than its training images.
    path = tmp_path / "checkpoint_epoch_3.pt"
    saved = TrainConfig(batch_size=128, epochs=5).to_dict()
    save_checkpoint(path, _resumable_payload(config=saved))
    runs_dir = tmp_path / "runs"
    arguments = ["train", "--resume", str(path), "--force", "--runs-dir", str(runs_dir)]
    result = runner.invoke(app, [*arguments, "--max-train-images", "100"])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert "batch_size 128 is more than the 100 training images" in line
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


def test_a_sweep_with_one_batch_too_large_trains_none_of_its_runs(tmp_path, no_data_is_read):
    runs_dir = tmp_path / "runs"
    arguments = ["sweep", "--grid", "batch_size=64,65", "--set", "data.max_train_images=64"]
    result = runner.invoke(app, [*arguments, "--runs-dir", str(runs_dir)])
    assert result.exit_code == 2
    assert "batch_size 65 is more than the 64 training images" in _one_error_line(result.output)
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("world_size", "batch_size", "most"), [("1", 55_001, 55_000), ("2", 27_501, 27_500)]
)
def test_train_itself_refuses_a_batch_larger_than_a_processs_images(
    tmp_path, monkeypatch, no_data_is_read, world_size, batch_size, most
):
    # As a library call, and in a rank torchrun started: the share is the launch's.
    monkeypatch.setenv("WORLD_SIZE", world_size)
    output_dir = tmp_path / "models"
    config = TrainConfig(batch_size=batch_size, output_dir=str(output_dir))
    with pytest.raises(ConfigError, match=f"is more than the {most} training images"):
        train_module.train(config)
    assert not output_dir.exists()


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE is 'abc', not a whole number from 1 up"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE is '0', not a whole number from 1 up"),
        ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK is 'x', not a whole number from 0 to 1"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK is '2', not a whole number from 0 to 1"),
        ({"WORLD_SIZE": "2"}, "RANK is not set, yet WORLD_SIZE is above 1"),
    ],
)
def test_nonsense_launch_variables_are_one_line_before_any_work(
    tmp_path, monkeypatch, no_data_is_read, environment, message
):
    monkeypatch.delenv("RANK", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    runs_dir = tmp_path / "runs"
    result = runner.invoke(app, ["train", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert message in line and "unset WORLD_SIZE and RANK" in line
    assert not runs_dir.exists()


def test_a_rank_left_in_the_environment_without_torchrun_is_a_plain_process(monkeypatch):
    # A plain run taken for rank 3 would neither print nor keep a run record.
    monkeypatch.setenv("RANK", "3")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch_rank() is None


# --- property: any YAML gives a config or a ConfigError -----------------------------------------

KNOWN_KEYS = [field.name for field in dataclasses.fields(TrainConfig)] + [
    "name",
    "warmup_epochs",
    "data_dir",
    "patience",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["cosine", "auto", "cpu", "1e-4", ".inf", "-.nan"])
)
YAML_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=YAML_VALUES.map(lambda value: yaml.safe_dump(value)) | st.text(max_size=200))
def test_any_yaml_document_gives_a_config_or_a_config_error(tmp_path, document):
    path = tmp_path / "arbitrary.yaml"
    path.write_text(document)
    try:
        assert isinstance(load_config(path), TrainConfig)
    except ConfigError as error:
        assert "\n" not in str(error) and len(str(error)) < 1000


@settings(max_examples=100, deadline=None)
@given(assignments=st.lists(st.text(max_size=30), max_size=3))
def test_any_set_assignment_gives_a_config_or_a_config_error(assignments):
    try:
        overrides = dict(parse_assignment(assignment) for assignment in assignments)
        assert isinstance(load_config(None, overrides), TrainConfig)
    except ConfigError as error:
        assert len(str(error)) < 1000


def test_subprocess_launch_contract_still_holds():
    """run_leaving_no_process returns the command's own exit code."""
    assert run_leaving_no_process([sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert subprocess.call([sys.executable, "-c", "raise SystemExit(3)"]) == 3


# --- 12. folders that cannot be written or entered: one line, before the work -----------------


@pytest.fixture
def nothing_is_writable(monkeypatch):
    """As an unprivileged user sees a read-only folder (root would write anywhere)."""
    monkeypatch.setattr(os, "access", lambda _path, mode, **_kwargs: not mode & os.W_OK)


def test_data_into_a_folder_that_cannot_be_written_is_one_line(tmp_path, nothing_is_writable):
    result = runner.invoke(app, ["data", "--data-dir", str(tmp_path / "ro")])
    assert result.exit_code == 1
    line = _one_error_line(result.output)
    assert "cannot take the data set's files" in line and "--data-dir" in line
    assert not (tmp_path / "ro").exists()  # no download was tried, nothing created


def test_train_with_a_data_dir_that_cannot_be_written_stops_before_any_data_is_read(
    tmp_path, nothing_is_writable, no_data_is_read
):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(
        app, ["train", "--data-dir", str(empty), "--runs-dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 2
    assert f"data_dir '{empty}' cannot take the data set's files" in _one_error_line(result.output)


def test_promote_into_a_models_dir_that_cannot_be_written_stops_before_evaluating(
    tmp_path, monkeypatch, nothing_is_writable
):
    candidate = tmp_path / "m.pt"
    save_checkpoint(candidate, checkpoint_payload())
    evaluated = []
    monkeypatch.setattr(
        "mnist_classifier.evaluation_report.evaluate_checkpoint",
        lambda *args, **kwargs: evaluated.append(args),
    )
    models_dir = tmp_path / "models"
    result = runner.invoke(
        app, ["promote", "--from", str(candidate), "--models-dir", str(models_dir)]
    )
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert f"cannot promote into {models_dir / 'production' / 'mnist'}" in line
    assert evaluated == [] and not models_dir.exists()


def test_a_checkpoint_in_a_folder_that_cannot_be_entered_is_one_line(tmp_path, monkeypatch):
    hidden = tmp_path / "private" / "x.pt"
    real_lstat = Path.lstat

    def denied(path):
        if Path(path) == hidden:
            raise PermissionError(13, "Permission denied", str(path))
        return real_lstat(path)

    monkeypatch.setattr(Path, "lstat", denied)
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(hidden)])
    assert result.exit_code == 1
    assert f"{hidden} cannot be read (Permission denied)" in _one_error_line(result.output)


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--runs-dir", "runs"],
        ["data"],
        ["data", "--dataset", "fashion-mnist"],
        ["evaluate", "--output-dir", "report"],
        ["export", "--output", "model.onnx"],
        ["promote"],
    ],
)
def test_a_data_dir_that_is_a_file_is_a_usage_error_before_any_work(tmp_path, monkeypatch, command):
    """Every command that reads the data set refuses such a --data-dir as train does: one line,
    exit code 2, before a model is loaded, a device named or anything written."""
    monkeypatch.chdir(tmp_path)
    Path("models/staging/mnist").mkdir(parents=True)
    save_checkpoint(Path("models/staging/mnist/best_model.pt"), checkpoint_payload())
    Path("a-file").write_text("")
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, [*command, "--data-dir", "a-file"])
    assert result.exit_code == 2
    assert _one_error_line(result.output) == (
        "error: data_dir 'a-file' is a file, not a folder; give --data-dir a folder "
        "(each data set goes into its own folder there, e.g. MNIST/raw/)"
    )
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (PermissionError(13, "Permission denied", "{models}"), "{models}: Permission denied"),
        (
            OSError(errno.ENOSPC, "No space left on device", "{models}"),
            "no space left on the device while writing {models}; free some space and run the "
            "command again",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "no space left on the device; free some space and run the command again",
        ),
    ],
)
def test_an_unforeseen_os_error_on_a_users_path_is_one_line(tmp_path, monkeypatch, error, message):
    models = str(tmp_path / "models")
    if error.filename:
        error = type(error)(error.errno, error.strerror, error.filename.format(models=models))

    def fails(_models_dir):
        raise error

    monkeypatch.setattr("mnist_classifier.registry.list_models", fails)
    result = runner.invoke(app, ["models", "--models-dir", models])
    assert result.exit_code == 1
    assert _one_error_line(result.output).startswith(f"error: {message.format(models=models)}")


@pytest.mark.parametrize(
    ("data", "exit_code", "message"),
    [
        ("a-file", 2, "is a file, not a folder"),  # found while checking the settings
        # found once the checkpoint folder is held and the run folder made
        ("data/MNIST/raw/t10k-labels-idx1-ubyte", 1, "not the canonical"),
    ],
)
def test_a_train_that_fails_before_its_first_checkpoint_leaves_none_of_its_folders(
    tmp_path, data, exit_code, message
):
    (tmp_path / data).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / data).write_bytes(b"not MNIST")
    before = sorted(tmp_path.rglob("*"))
    new = tmp_path / "new"
    arguments = ["--output-dir", str(new / "nested"), "--runs-dir", str(new / "runs")]
    data_dir = tmp_path / data.split("/")[0]
    result = runner.invoke(app, ["train", *arguments, "--data-dir", str(data_dir)])
    assert result.exit_code == exit_code and message in result.output
    assert sorted(tmp_path.rglob("*")) == before  # no folder, no lock file
    assert "Run directory" not in result.output  # nor a name for the folder that went again


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_train_into_a_read_only_folder_is_one_line_and_makes_nothing(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    output_dir = read_only / "new" / "nested"
    arguments = ["--output-dir", str(output_dir), "--runs-dir", str(tmp_path / "runs")]
    result = runner.invoke(app, ["train", *arguments])
    assert result.exit_code == 2
    assert f"output_dir '{output_dir}' cannot be written" in _one_error_line(result.output)
    assert list(read_only.iterdir()) == [] and not (tmp_path / "runs").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_really_refuses(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    result = runner.invoke(app, ["data", "--data-dir", str(read_only)])
    assert result.exit_code == 1
    assert "cannot take the data set's files" in _one_error_line(result.output)


FREE_FOR_64_IMAGES = 64 * TRAINING_BYTES_PER_IMAGE


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--batch-size", "65"],
            f"batch_size 65 needs about {65 * TRAINING_BYTES_PER_IMAGE / 1e9:.1f} GB of memory "
            f"to train, and {FREE_FOR_64_IMAGES / 1e9:.1f} GB is free here; choose at most 64 "
            "with --batch-size",
        ),
        (  # two CPU processes on one machine share its memory
            ["--batch-size", "33", "--nproc", "2", "--device", "cpu"],
            "batch_size 33 in each of the 2 processes needs about",
        ),
    ],
)
def test_a_batch_that_needs_more_memory_than_is_free_is_refused_before_any_work(
    tmp_path, monkeypatch, no_data_is_read, nothing_is_launched, arguments, message
):
    """The kernel would kill such a training without a word, minutes in."""
    monkeypatch.setattr("mnist_classifier.train.available_memory_bytes", lambda: FREE_FOR_64_IMAGES)
    runs_dir = tmp_path / "runs"
    result = runner.invoke(app, ["train", "--runs-dir", str(runs_dir), *arguments])
    assert result.exit_code == 2
    assert message in _one_error_line(result.output)
    assert not runs_dir.exists()


def test_running_out_of_gpu_memory_is_one_line_naming_the_batch(tmp_path, monkeypatch):
    def out_of_memory(*_, **__):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("mnist_classifier.train.train", out_of_memory)
    folders = ["--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    result = runner.invoke(app, ["train", *folders, "--batch-size", "512"])
    assert result.exit_code == 1
    assert _one_error_line(result.output) == (
        "error: training ran out of GPU memory with batch_size 512; choose a smaller --batch-size"
    )
