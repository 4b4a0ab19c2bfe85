import torch

from mnist_classifier.model import SimpleCNN, count_parameters


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
