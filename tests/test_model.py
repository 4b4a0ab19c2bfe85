from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_classifier.config import (
    ConfigError,
    ModelConfig,
    config_from_dict,
    load_config,
    make_config,
)
from mnist_classifier.model import Dropout, SimpleCNN, count_parameters

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_parameter_count_is_the_true_sum_of_the_layers():
    # Hand-computed: conv1 1*32*9+32, conv2 32*64*9+64, fc1 3136*128+128, fc2 128*10+10.
    expected = (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (3136 * 128 + 128) + (128 * 10 + 10)
    assert expected == 421_642  # the lab's 421,226 is an arithmetic slip
    assert count_parameters(SimpleCNN()) == expected


def test_state_dict_keys_are_the_labs_layer_names():
    keys = set(SimpleCNN().state_dict())
    layers = {"conv1", "conv2", "fc1", "fc2"}
    assert keys == {f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")}
    assert [name for name, _ in SimpleCNN().named_children()] == [
        "conv1",
        "conv2",
        "pool",
        "dropout1",
        "fc1",
        "dropout2",
        "fc2",
    ]


def test_returns_logits_of_shape_batch_by_ten_and_no_softmax():
    model = SimpleCNN().eval()
    logits = model(torch.randn(5, 1, 28, 28))
    assert logits.shape == (5, 10)
    # Logits, not probabilities: rows need not sum to one and may be negative.
    assert not torch.allclose(logits.sum(dim=1), torch.ones(5))


def test_pool_then_relu_is_the_same_function_as_relu_then_pool():
    torch.manual_seed(0)
    model = SimpleCNN().eval()
    images = torch.randn(8, 1, 28, 28)

    def relu_then_pool(x):
        x = model.pool(torch.relu(model.conv1(x)))
        x = model.pool(torch.relu(model.conv2(x)))
        return model.fc2(torch.relu(model.fc1(torch.flatten(x, 1))))

    torch.testing.assert_close(model(images), relu_then_pool(images), rtol=0, atol=0)


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = SimpleCNN().eval()
    images = torch.randn(4, 1, 28, 28)
    reference = model(images)
    fast = model.to(memory_format=torch.channels_last)(
        images.contiguous(memory_format=torch.channels_last)
    )
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_dropout_settings_keep_the_labs_layers_and_parameters():
    lab, off = SimpleCNN(), SimpleCNN(ModelConfig(dropout1=0.0, dropout2=0.0))
    assert (lab.dropout1.p, lab.dropout2.p) == (0.25, 0.5)  # the default is the lab's
    assert (off.dropout1.p, off.dropout2.p) == (0.0, 0.0)
    assert [name for name, _ in off.named_children()] == [name for name, _ in lab.named_children()]
    assert count_parameters(off) == count_parameters(lab)
    off.load_state_dict(lab.state_dict())  # the same weights fit either setting


def test_dropout_off_trains_deterministically_and_on_does_not():
    torch.manual_seed(0)
    images = torch.randn(4, 1, 28, 28)
    off = SimpleCNN(ModelConfig(dropout1=0.0, dropout2=0.0)).train()
    torch.testing.assert_close(off(images), off.eval()(images), rtol=0, atol=0)
    lab = SimpleCNN().train()
    assert not torch.equal(lab(images), lab(images))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.dropout1": 1.0}, r"model.dropout1 must be in \[0, 1\)"),
        ({"model.dropout2": -0.1}, r"model.dropout2 must be in \[0, 1\)"),
        ({"model.dropout1": "off"}, "model.dropout1 must be of type float"),
        ({"model.dropout": 0}, "unknown config key 'model.dropout'"),
    ],
)
def test_bad_dropout_settings_are_refused_with_the_dotted_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config(overrides)


def test_the_seed_config_keeps_the_labs_dropout_and_old_checkpoints_read_as_the_lab():
    seed = load_config(REPO_ROOT / "configs" / "seed.yaml")
    assert seed.model == ModelConfig() == ModelConfig(dropout1=0.25, dropout2=0.5)
    saved_before_the_setting = {
        key: value for key, value in seed.to_dict().items() if key != "model"
    }
    assert config_from_dict(saved_before_the_setting).model == ModelConfig()


def _dropped_both_ways(x: torch.Tensor, p: float, seed: int):
    """(ours, torch's): output, input gradient and the generator's next draw after each."""
    results = []
    for dropout in (Dropout(p).train(), lambda t: F.dropout(t, p, training=True)):
        leaf = x.detach().clone().requires_grad_()
        torch.manual_seed(seed)
        out = dropout(leaf)
        after = torch.randint(0, 2**62, (4,))
        out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape))
        results.append((out.detach(), leaf.grad, after))
    return results


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    p=st.one_of(st.sampled_from([0.25, 0.5, 0.1]), st.floats(0.001, 0.999)),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    channels_last=st.booleans(),
    strided=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_cpu_dropout_draws_torchs_own_mask(shape, p, dtype, channels_last, strided, seed):
    # The oracle is torch's CPU dropout: same output and gradient bit for bit, and the
    # generator left where torch leaves it, so every later draw (and run) is unchanged.
    x = torch.randn(shape).to(dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if strided:  # a view that is neither layout: torch's own dropout takes it
        x = x[..., ::2]
    (ours, our_grad, our_next), (theirs, their_grad, their_next) = _dropped_both_ways(x, p, seed)
    assert torch.equal(ours, theirs)
    assert torch.equal(our_grad, their_grad)
    assert torch.equal(our_next, their_next)
    assert ours.stride() == theirs.stride()


def test_the_models_dropout_drops_about_p_and_is_the_identity_in_evaluation():
    x = torch.ones(200_000)
    torch.manual_seed(0)
    dropped = Dropout(0.25).train()(x)
    assert abs((dropped == 0).float().mean().item() - 0.25) < 0.005
    assert torch.equal(dropped.unique(), torch.tensor([0.0, 1 / 0.75]))  # kept ones scaled
    assert torch.equal(Dropout(0.25).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_the_lab_model_in_training_is_the_same_function_as_with_torchs_dropout():
    torch.manual_seed(0)
    ours = SimpleCNN().to(memory_format=torch.channels_last).train()
    torchs = SimpleCNN().to(memory_format=torch.channels_last).train()
    torchs.load_state_dict(ours.state_dict())
    torchs.dropout1, torchs.dropout2 = torch.nn.Dropout(0.25), torch.nn.Dropout(0.5)
    images = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    outputs = []
    for model in (ours, torchs):
        torch.manual_seed(7)
        outputs.append(model(images))
    assert torch.equal(*outputs)
