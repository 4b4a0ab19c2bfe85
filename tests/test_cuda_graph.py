"""The training step replayed as a CUDA graph trains exactly as the step launched from Python.

The training tests need a CUDA GPU and are skipped without one. cuDNN is held to its
deterministic kernels, so that two runs of the same settings can be compared bit for bit.
A failed recording is checked everywhere: it stops training with one line that says how to
train without a graph.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from typer.testing import CliRunner

from mnist_classifier import cuda_graph
from mnist_classifier import train as train_module
from mnist_classifier.cli import app
from mnist_classifier.config import load_config
from mnist_classifier.cuda_graph import CudaGraphError, GraphedStep
from mnist_classifier.resume import load_resume_checkpoint
from mnist_classifier.train import train

pytestmark = pytest.mark.usefixtures("synthetic_data")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def deterministic_cudnn(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


def _config(tmp_path, name, **overrides):
    return load_config(
        None,
        {
            "epochs": 2,
            # 400 images in batches of 64: six full batches go through the graph (after the
            # warm-up steps) and each epoch's short last batch of 16 does not.
            "batch_size": 64,
            "data.max_train_images": 400,
            "data.validation_size": 200,
            "data.data_dir": str(tmp_path / "data"),
            "output_dir": str(tmp_path / name),
            "device": "cuda",
            "precision": "fp32",
            "schedule.name": "onecycle",
            "seed": 3,
            **overrides,
        },
    )


def _differences(first: dict, second: dict) -> dict[str, float]:
    """The largest absolute difference of each tensor that is not identical."""
    return {
        key: (first[key].double() - second[key].double()).abs().max().item()
        for key in first
        if not torch.equal(first[key], second[key])
    }


@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graph_replays_train_bit_identically_to_launched_steps(tmp_path, precision):
    # The lab's dropout stays on, so the graph's random masks are checked too.
    launched = train(_config(tmp_path, "launched", cuda_graph=False, precision=precision))
    graphed = train(_config(tmp_path, "graphed", cuda_graph=True, precision=precision))

    launched_state = torch.load(launched.epochs[-1].checkpoint, weights_only=True)
    graphed_state = torch.load(graphed.epochs[-1].checkpoint, weights_only=True)
    assert _differences(launched_state["model_state_dict"], graphed_state["model_state_dict"]) == {}
    assert [epoch.train_loss for epoch in graphed.epochs] == [
        epoch.train_loss for epoch in launched.epochs
    ]
    assert [epoch.validation_accuracy for epoch in graphed.epochs] == [
        epoch.validation_accuracy for epoch in launched.epochs
    ]


@needs_gpu
def test_a_graphed_run_resumes_bit_identically(tmp_path):
    uninterrupted = train(_config(tmp_path, "uninterrupted"))
    resumed = train(
        _config(tmp_path, "resumed"),
        resume_from=load_resume_checkpoint(uninterrupted.epochs[0].checkpoint),
    )
    expected = torch.load(uninterrupted.epochs[-1].checkpoint, weights_only=True)
    actual = torch.load(resumed.epochs[-1].checkpoint, weights_only=True)
    assert _differences(expected["model_state_dict"], actual["model_state_dict"]) == {}


def test_a_failed_recording_is_one_line_naming_the_way_out(monkeypatch):
    @contextlib.contextmanager
    def refusing_graph(_graph):
        yield
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(cuda_graph.torch.cuda, "CUDAGraph", lambda: None)
    monkeypatch.setattr(cuda_graph.torch.cuda, "graph", refusing_graph)
    weight = torch.nn.Parameter(torch.ones(3))
    step = GraphedStep(
        lambda images, labels: (weight.sum(), labels.sum()), torch.optim.Adam([weight])
    )
    step.steps_before_recording = 0
    with pytest.raises(CudaGraphError) as raised:
        step(torch.zeros(2, 28, 28), torch.zeros(2, dtype=torch.int64))
    message = str(raised.value)
    assert "\n" not in message
    assert "operation not permitted when stream is capturing" in message
    assert message.endswith("train without one: --set cuda_graph=false")


def test_the_cli_reports_a_failed_recording_in_one_line_and_exits_1(monkeypatch, tmp_path):
    def failing_train(*_arguments, **_keywords):
        raise CudaGraphError("recording the training step as a CUDA graph failed (x); train ...")

    monkeypatch.setattr(train_module, "train", failing_train)
    result = CliRunner().invoke(
        app, ["train", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: recording the training step as a CUDA graph failed (x); train ..."
    ]
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # the run that never trained left nothing
