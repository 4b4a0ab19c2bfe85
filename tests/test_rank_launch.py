"""`mnist train --nproc N` resolves the config once and hands it to the ranks in a file; a rank
trains on that file alone (the torchrun runs themselves are in test_distributed.py, slow)."""

import json
from dataclasses import asdict
from pathlib import Path

import yaml
from typer.testing import CliRunner

from mnist_classifier.cli import app
from mnist_classifier.config import config_from_dict, load_config
from mnist_classifier.distributed import RankLaunch

runner = CliRunner()


def test_the_ranks_get_the_resolved_config_and_no_command_line(tmp_path, monkeypatch):
    config_file = tmp_path / "base.yaml"
    config_file.write_text("epochs: 7\nschedule:\n  name: cosine\n")
    launched = []

    def fake_torchrun(nproc, arguments):
        command, launch_file = arguments
        launched.append((nproc, command, launch_file, RankLaunch.read(launch_file)))
        return 0

    monkeypatch.setattr("mnist_classifier.distributed.launch_with_torchrun", fake_torchrun)
    runs_dir = str(tmp_path / "runs")
    arguments = ["--config", str(config_file), "--set", "lr=0.01", "--device", "cpu"]
    result = runner.invoke(
        app, ["train", "--nproc", "2", *arguments, "--runs-dir", runs_dir, "--quiet", "--force"]
    )
    assert result.exit_code == 0, result.output

    ((nproc, command, launch_file, launch),) = launched
    assert (nproc, command) == (2, "train-rank")
    expected = load_config(config_file, {"lr": 0.01, "device": "cpu", "runs_dir": runs_dir})
    assert config_from_dict(launch.config) == expected
    assert (launch.quiet, launch.force, launch.resume) == (True, True, None)
    assert launch.config_file == str(config_file)
    assert launch.explicit == {"lr": 0.01, "device": "cpu", "runs_dir": runs_dir}
    assert not Path(launch_file).exists()  # the launch file went with the launch


# One epoch on 128 synthetic images (the tests' synthetic_data fixture), on the CPU.
TINY_RUN = {"epochs": 1, "data.max_train_images": 128, "data.validation_size": 64, "device": "cpu"}


def _write_launch(tmp_path: Path, config, **options) -> Path:
    """The file `mnist train --nproc N` hands its ranks: the resolved config, and `options`."""
    launch_file = tmp_path / "launch.json"
    launch = RankLaunch(config=config.to_dict(), quiet=True, **options)
    launch_file.write_text(json.dumps(asdict(launch)))
    return launch_file


def test_a_rank_trains_the_config_in_its_launch_file(tmp_path, synthetic_data):
    settings = {**TINY_RUN, "runs_dir": str(tmp_path / "runs"), "name": "from-file"}
    config = load_config(None, settings)
    launch_file = _write_launch(tmp_path, config)

    result = runner.invoke(app, ["train-rank", str(launch_file)])

    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("-from-file")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config_from_dict(saved) == config


def test_train_rank_is_not_offered_to_people():
    assert "train-rank" not in runner.invoke(app, ["--help"]).output


def test_only_rank_0_says_where_it_resumes(tmp_path, synthetic_data, monkeypatch):
    """Under torchrun every rank printed "Resuming from ...", where rank 0 alone prints the
    rest of the training's output."""
    import mnist_classifier.train as train_module

    config = load_config(None, {**TINY_RUN, "runs_dir": str(tmp_path / "runs")})
    assert runner.invoke(app, ["train-rank", str(_write_launch(tmp_path, config))]).exit_code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    checkpoint = run_dir / "checkpoint_epoch_1.pt"
    # Each rank resumes it for a second epoch; which rank prints is the point, not the training.
    monkeypatch.setattr(train_module, "train", lambda *_arguments, **_keywords: None)
    launch_file = _write_launch(tmp_path, config, resume=str(checkpoint), explicit={"epochs": 2})

    printed = {}
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        result = runner.invoke(app, ["train-rank", str(launch_file)])
        assert result.exit_code == 0, result.output
        printed[rank] = result.output

    assert printed[0].splitlines() == [f"Resuming from {checkpoint} (run {run_dir.name})"]
    assert printed[1] == ""
