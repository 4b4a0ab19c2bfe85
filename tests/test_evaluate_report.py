"""`mnist evaluate`'s report: JSON-only stdout, the files, numbers that agree with each other."""

import json
from pathlib import Path

import pytest
from trained_model import tiny_checkpoint
from typer.testing import CliRunner

from mnist_classifier.cli import app

pytestmark = pytest.mark.slow  # trains a tiny model and evaluates on the real test set

runner = CliRunner()


def test_json_report_is_the_only_stdout_and_matches_the_files(mnist_dir, tmp_path):
    checkpoint = tiny_checkpoint(mnist_dir)
    arguments = ["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(mnist_dir)]
    arguments += ["--output-dir", str(tmp_path / "report"), "--format", "json", "--device", "cpu"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # nothing but the JSON

    assert report == json.loads((tmp_path / "report" / "report.json").read_text())
    for name in ("confusion_matrix", "misclassified", "sample_predictions", "reliability_diagram"):
        assert Path(report["files"][name]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    confusion = report["confusion_matrix"]
    assert sum(map(sum, confusion)) == report["test_images"] == 10_000
    assert sum(confusion[d][d] for d in range(10)) == report["correct"]
    for row in report["per_class"]:
        digit = row["digit"]
        predicted_as_digit = sum(confusion[t][digit] for t in range(10))
        assert row["precision"] == pytest.approx(confusion[digit][digit] / predicted_as_digit)
        assert row["recall"] == pytest.approx(confusion[digit][digit] / sum(confusion[digit]))
    assert len(report["misclassified"]) == 10_000 - report["correct"]
    top = report["most_confused_pairs"][0]
    assert top["count"] == max(confusion[t][p] for t in range(10) for p in range(10) if t != p)
    assert 0 <= report["calibration"]["expected_calibration_error"] < 0.1
    assert sum(report["calibration"]["bin_count"]) == 10_000
