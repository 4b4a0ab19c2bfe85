"""A model trained with dropout off goes through every reader like any other.

Each reader (evaluate, export, serve, resume) must rebuild the model from the checkpoint's own
config: a reader that built the lab's default model would carry dropout 0.25/0.5 instead.
"""

import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from mnist_classifier.batching import Split, normalize
from mnist_classifier.checkpoint import load_checkpoint
from mnist_classifier.config import ModelConfig, make_config
from mnist_classifier.data import load_split
from mnist_classifier.evaluate import evaluate
from mnist_classifier.export import export_model
from mnist_classifier.preprocess import preprocess_image
from mnist_classifier.resume import ResumeError, load_resume_checkpoint
from mnist_classifier.serve.app import create_app
from mnist_classifier.serve.loading import load_checkpoint_model
from mnist_classifier.train import train

pytestmark = pytest.mark.slow  # trains twice on 512 of the real MNIST images

DROPOUT_OFF = ModelConfig(dropout1=0.0, dropout2=0.0)


def _config(mnist_dir, output_dir, **overrides):
    return make_config(
        {
            "epochs": 2,
            "data.max_train_images": 512,
            "data.validation_size": 500,
            "data.data_dir": str(mnist_dir),
            "output_dir": str(output_dir),
            "device": "cpu",
            "model.dropout1": 0.0,
            "model.dropout2": 0.0,
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("dropout-off")
    result = train(_config(mnist_dir, output_dir))
    return result, output_dir


@pytest.fixture(scope="module")
def test_images(mnist_dir):
    images, labels = load_split(mnist_dir, train=False)
    return images[:1000], labels[:1000]


def test_the_checkpoint_carries_the_setting_and_loading_rebuilds_that_model(trained):
    result, output_dir = trained
    raw = torch.load(output_dir / "checkpoint_epoch_2.pt", weights_only=True)
    assert raw["config"]["model"] == {"dropout1": 0.0, "dropout2": 0.0}
    model = load_checkpoint(output_dir / "checkpoint_epoch_2.pt").model
    assert model.settings == DROPOUT_OFF
    assert (model.dropout1.p, model.dropout2.p) == (0.0, 0.0)
    assert set(raw["model_state_dict"]) == set(model.state_dict())


def test_evaluation_agrees_with_the_models_own_predictions(trained, test_images):
    _, output_dir = trained
    model = load_checkpoint(output_dir / "best_model.pt").model
    images, labels = test_images
    with torch.inference_mode():
        # Counted, then divided in Python, as evaluate does: a float32 mean of 743 right of
        # 1,000 is 0.74299997, not 0.743.
        expected = (model(normalize(images)).argmax(1) == labels).sum().item() / len(labels)
    assert evaluate(model, Split(images, labels)).accuracy == pytest.approx(expected, abs=1e-9)
    assert expected > 0.7  # learned something: not an untrained model by accident


@pytest.mark.parametrize("export_format", ["onnx", "torchscript", "safetensors"])
def test_exports_pass_their_parity_check(trained, test_images, tmp_path, export_format):
    _, output_dir = trained
    model = load_checkpoint(output_dir / "best_model.pt").model
    output = tmp_path / f"model.{export_format}"
    result = export_model(model, export_format, output, test_images[0][:200])
    assert result.parity.passed and result.parity.images == 200


def test_serving_answers_with_the_checkpoints_model(trained, test_images):
    _, output_dir = trained
    served = load_checkpoint_model(output_dir / "best_model.pt")
    client = TestClient(create_app(served.predictor, served.info), base_url="http://127.0.0.1")
    image = 255 - test_images[0][0].numpy()  # dark ink on white, as a person uploads
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, format="PNG")
    response = client.post("/predict", files={"file": ("digit.png", buffer.getvalue())})
    assert response.status_code == 200, response.text
    model = load_checkpoint(output_dir / "best_model.pt").model
    with torch.inference_mode():
        seen = preprocess_image(buffer.getvalue()).unsqueeze(0)
        expected = torch.softmax(model(normalize(seen)), 1)[0]
    answer = response.json()
    assert answer["digit"] == int(expected.argmax())
    np.testing.assert_allclose(answer["probabilities"], expected.numpy(), atol=1e-6)


def test_resume_continues_the_same_model_and_refuses_another_dropout(trained, mnist_dir, tmp_path):
    result, _ = trained
    first_epoch = train(_config(mnist_dir, tmp_path, epochs=1))
    resumed = train(
        _config(mnist_dir, tmp_path / "resumed"),
        resume_from=load_resume_checkpoint(first_epoch.epochs[-1].checkpoint),
    )
    straight = torch.load(result.epochs[-1].checkpoint, weights_only=True)["model_state_dict"]
    continued = torch.load(resumed.epochs[-1].checkpoint, weights_only=True)["model_state_dict"]
    for name, tensor in straight.items():
        assert torch.equal(tensor, continued[name]), name
    with pytest.raises(ResumeError, match="model.dropout1 0.0 -> 0.25"):
        train(
            _config(mnist_dir, tmp_path / "other", **{"model.dropout1": 0.25}),
            resume_from=load_resume_checkpoint(first_epoch.epochs[-1].checkpoint),
        )


def test_the_safetensors_sidecar_names_the_setting(trained, test_images, tmp_path):
    _, output_dir = trained
    model = load_checkpoint(output_dir / "best_model.pt").model
    export_model(model, "safetensors", tmp_path / "model.safetensors", test_images[0][:10])
    sidecar = json.loads((tmp_path / "model.safetensors.json").read_text())
    assert sidecar["model"] == {"dropout1": 0.0, "dropout2": 0.0}
