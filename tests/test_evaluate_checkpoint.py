"""evaluate_checkpoint: the one path from a checkpoint file to its test-set result, and the
report saved from it (what `mnist evaluate`, `mnist promote` and benchmarks/accuracy.py use)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_payload
from matplotlib.figure import Figure
from synthetic_data import synthetic_images
from typer.testing import CliRunner

from mnist_classifier.batching import Split
from mnist_classifier.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mnist_classifier.cli import app
from mnist_classifier.config import make_config
from mnist_classifier.data import MnistFiles
from mnist_classifier.evaluate import EvaluationObserver, evaluate
from mnist_classifier.evaluation_report import (
    ReportError,
    VerifiedTestSplit,
    evaluate_checkpoint,
    save_report,
)
from mnist_classifier.figures import is_our_figure
from mnist_classifier.files import NotOurFile
from mnist_classifier.model import SimpleCNN


def _test_data(count: int = 200) -> VerifiedTestSplit:
    files = MnistFiles(Path("synthetic"), "synthetic", {"synthetic": "0" * 64}, "mnist")
    return VerifiedTestSplit(files, Split(*synthetic_images(count, seed=3)))


def _checkpoint(tmp_path: Path, **changes) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "checkpoint_epoch_3.pt"
    save_checkpoint(path, checkpoint_payload(SimpleCNN(), **changes))
    return path


class Recorder(EvaluationObserver):
    def __init__(self) -> None:
        self.calls = []

    def loading_test_data(self, checkpoint, device) -> None:
        self.calls.append(("loading", checkpoint.epoch, str(device)))

    def evaluating(self, checkpoint, test_split) -> None:
        self.calls.append(("evaluating", len(test_split)))


def test_the_result_is_the_eager_models_on_the_test_split(tmp_path):
    path, test_data, observer = _checkpoint(tmp_path), _test_data(), Recorder()
    evaluation = evaluate_checkpoint(
        path, "mnist", test_data=test_data, batch_size=64, observer=observer
    )
    loaded = load_checkpoint(path)
    expected = evaluate(loaded.model, test_data.split, normalization=loaded.normalization)
    assert torch.equal(evaluation.result.predictions, expected.predictions)
    assert evaluation.result.correct == expected.correct and evaluation.result.total == 200
    assert evaluation.result.loss == pytest.approx(expected.loss, rel=1e-6)
    assert evaluation.checkpoint.path == path and evaluation.test_data is test_data
    assert observer.calls == [("loading", 3, "cpu"), ("evaluating", 200)]


def test_a_checkpoint_of_another_data_set_is_refused_before_any_data_is_read(tmp_path):
    fashion = make_config({"data.dataset": "fashion-mnist"})
    path, observer = _checkpoint(tmp_path, config=fashion.to_dict()), Recorder()
    missing_data = tmp_path / "no-data-here"
    with pytest.raises(CheckpointError, match="refusing to promote .* use --dataset fashion"):
        evaluate_checkpoint(
            path, "mnist", data_dir=missing_data, action="promote", observer=observer
        )
    assert observer.calls == [] and not missing_data.exists()


def test_the_saved_report_is_report_json_and_reaches_the_run_summary(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"best_validation_accuracy": 0.5}))
    path = run_dir / "best_model.pt"
    save_checkpoint(path, checkpoint_payload())
    evaluation = evaluate_checkpoint(path, "mnist", test_data=_test_data())

    report = save_report(evaluation, grid_size=4, output_dir=tmp_path / "report")

    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert written == json.loads(json.dumps(report))  # tuples as JSON lists
    assert report["correct"] == evaluation.result.correct and report["test_images"] == 200
    assert set(report["files"]) == {
        "report",
        "confusion_matrix",
        "misclassified",
        "sample_predictions",
        "reliability_diagram",
    }
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_accuracy"] == evaluation.result.accuracy


def test_a_damaged_run_summary_keeps_the_report_and_is_one_report_error(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("[1, 2]")  # not a summary: left as it is
    path = run_dir / "best_model.pt"
    save_checkpoint(path, checkpoint_payload())
    evaluation = evaluate_checkpoint(path, "mnist", test_data=_test_data())
    with pytest.raises(ReportError) as raised:
        save_report(evaluation, grid_size=4, output_dir=tmp_path / "report")
    message = str(raised.value)
    assert "\n" not in message and f"the report is in {tmp_path / 'report'}" in message
    assert "summary.json" in message
    assert (tmp_path / "report" / "report.json").is_file()
    assert (run_dir / "summary.json").read_text() == "[1, 2]"


def test_an_unwritable_report_folder_is_one_report_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    evaluation = evaluate_checkpoint(_checkpoint(tmp_path), "mnist", test_data=_test_data())
    with pytest.raises(ReportError, match=f"cannot write the report to {blocker}/report"):
        save_report(evaluation, grid_size=4, output_dir=blocker / "report")


def test_a_report_replaces_an_earlier_report_in_its_folder(tmp_path):
    evaluation = evaluate_checkpoint(_checkpoint(tmp_path), "mnist", test_data=_test_data())
    first = save_report(evaluation, grid_size=4, output_dir=tmp_path / "report")
    second = save_report(evaluation, grid_size=4, output_dir=tmp_path / "report")
    assert second == first and first["written_by"] == "mnist evaluate"


@pytest.mark.parametrize("name", ["report.json", "misclassified.png", "confusion_matrix.png"])
def test_a_report_never_replaces_a_file_it_did_not_write(tmp_path, name):
    evaluation = evaluate_checkpoint(_checkpoint(tmp_path), "mnist", test_data=_test_data())
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / name).write_bytes(b"the user's own file")

    with pytest.raises(NotOurFile, match=f"{folder / name} exists and is not a "):
        save_report(evaluation, grid_size=4, output_dir=folder)
    assert [path.name for path in folder.iterdir()] == [name]  # nothing written beside it
    assert (folder / name).read_bytes() == b"the user's own file"


def _figures_drawn(monkeypatch) -> dict[str, list[dict]]:
    """Every figure saved from now on, by file name: per axes, its title, the texts drawn in
    it (a grid's captions) and how many images it shows."""
    drawn = {}
    save = Figure.savefig

    def recording_save(figure, path, *arguments, **keywords):
        drawn[Path(path).name] = [
            {
                "title": axes.get_title(),
                "texts": [text.get_text() for text in axes.texts],
                "images": len(axes.images),
            }
            for axes in figure.axes
        ]
        return save(figure, path, *arguments, **keywords)

    monkeypatch.setattr(Figure, "savefig", recording_save)
    return drawn


def test_a_model_without_mistakes_gets_a_misclassified_figure_that_says_so(tmp_path, monkeypatch):
    """misclassified.png was an empty grid under a title of "(0 of 0)" when nothing was wrong."""
    path, test_data = _checkpoint(tmp_path), _test_data()
    # Labelled with the model's own answers: a test split on which it makes no mistake.
    answers = evaluate_checkpoint(path, "mnist", test_data=test_data).result.predictions
    answered = VerifiedTestSplit(test_data.files, Split(test_data.split.images, answers))
    evaluation = evaluate_checkpoint(path, "mnist", test_data=answered)
    drawn = _figures_drawn(monkeypatch)

    report = save_report(evaluation, grid_size=4, output_dir=tmp_path / "report")

    assert report["misclassified"] == [] and report["correct"] == report["test_images"] == 200
    figure = Path(report["files"]["misclassified"])
    assert is_our_figure(figure)  # still written, still marked as ours
    (axes,) = drawn[figure.name]
    assert axes["title"] == f"No misclassified images among the {len(answers):,} test images"
    assert axes["images"] == 0  # no empty grid beneath it


def test_the_misclassified_figure_shows_the_most_confident_mistakes_first(tmp_path, monkeypatch):
    evaluation = evaluate_checkpoint(_checkpoint(tmp_path), "mnist", test_data=_test_data())
    labels, result = evaluation.test_data.split.labels, evaluation.result
    wrong = [index for index in range(result.total) if result.predictions[index] != labels[index]]
    assert len(wrong) > 4  # an untrained model: more mistakes than the grid shows
    worst = sorted(wrong, key=lambda index: -float(result.confidences[index]))[:4]
    drawn = _figures_drawn(monkeypatch)

    report = save_report(evaluation, grid_size=4, output_dir=tmp_path / "report")

    assert is_our_figure(Path(report["files"]["misclassified"]))
    (axes,) = drawn["misclassified.png"]
    assert axes["title"] == (
        f"Misclassified test images, most confident first (4 of {len(wrong)})\n"
        "true→predicted confidence"
    )
    assert axes["texts"] == [
        f"{int(labels[index])}→{int(result.predictions[index])} "
        f"{100 * float(result.confidences[index]):.0f}%"
        for index in worst
    ]
    assert axes["images"] == 1


runner = CliRunner()


@pytest.mark.parametrize(
    ("users_file", "message"),
    [
        ("report.json", "report.json exists and is not a report of this project"),
        ("misclassified.png", "misclassified.png exists and is not a figure of this project"),
    ],
)
def test_evaluate_refuses_a_report_folder_holding_other_files_before_evaluating(
    tmp_path, users_file, message
):
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / users_file).write_bytes(b"the user's own file")
    no_data = tmp_path / "no-data"  # the refusal comes before any data is read
    arguments = ["evaluate", "--checkpoint", str(_checkpoint(tmp_path)), "--device", "cpu"]
    result = runner.invoke(
        app, [*arguments, "--data-dir", str(no_data), "--output-dir", str(folder)]
    )

    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert "choose another --output-dir" in result.output
    assert (folder / users_file).read_bytes() == b"the user's own file"
    assert [path.name for path in folder.iterdir()] == [users_file] and not no_data.exists()
