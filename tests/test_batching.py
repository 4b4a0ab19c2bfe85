import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler
from torchvision import transforms

from mnist_classifier.batching import (
    Ranks,
    Split,
    normalize,
    ordered_batches,
    shard,
    shuffled_batches,
    split_train_validation,
)


def _toy_split(n: int = 103) -> Split:
    images = torch.arange(n, dtype=torch.int64).reshape(n, 1, 1).expand(n, 28, 28).to(torch.uint8)
    return Split(images.contiguous(), torch.arange(n))


def test_every_training_index_once_per_epoch_in_a_new_order_each_epoch():
    split = _toy_split()
    generator = torch.Generator().manual_seed(0)
    orders = []
    for _ in range(3):
        labels = torch.cat(
            [batch_labels for _, batch_labels in shuffled_batches(split, 10, generator)]
        )
        assert sorted(labels.tolist()) == list(range(len(split)))
        orders.append(labels)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])


def test_images_travel_with_their_labels():
    split = _toy_split()
    for images, labels in shuffled_batches(split, 16, torch.Generator().manual_seed(1)):
        assert torch.equal(images[:, 0, 0].long(), labels)


def test_same_seed_same_order():
    split = _toy_split()
    first = [labels for _, labels in shuffled_batches(split, 7, torch.Generator().manual_seed(5))]
    second = [labels for _, labels in shuffled_batches(split, 7, torch.Generator().manual_seed(5))]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 40), world_size=st.integers(1, 100))
def test_each_rank_takes_what_distributed_sampler_deals_it(length, world_size):
    # Even with more ranks than images: every rank must get its share, or it waits for ever.
    order = torch.randperm(length, generator=torch.Generator().manual_seed(length))
    for rank in range(world_size):
        dealt = DistributedSampler(range(length), world_size, rank, shuffle=False)
        assert shard(order, Ranks(rank, world_size)).tolist() == order[list(dealt)].tolist()


def test_evaluation_does_not_shuffle():
    split = _toy_split()
    labels = torch.cat([batch_labels for _, batch_labels in ordered_batches(split, 10)])
    assert torch.equal(labels, split.labels)


def test_an_evaluation_batch_larger_than_the_split_is_the_split_once():
    # eval_batch_size has no bound of its own: a huge one costs no more than the whole split.
    split = _toy_split()
    batches = list(ordered_batches(split, 2**62))
    assert len(batches) == 1
    assert torch.equal(batches[0][0], split.images) and torch.equal(batches[0][1], split.labels)


def test_validation_split_is_fixed_disjoint_and_complete():
    split = _toy_split(1000)
    train_a, validation_a = split_train_validation(split.images, split.labels, 100, split_seed=0)
    train_b, validation_b = split_train_validation(split.images, split.labels, 100, split_seed=0)
    assert torch.equal(validation_a.labels, validation_b.labels)
    assert len(validation_a) == 100 and len(train_a) == 900
    assert set(train_a.labels.tolist()).isdisjoint(validation_a.labels.tolist())
    assert set(train_a.labels.tolist()) | set(validation_a.labels.tolist()) == set(range(1000))
    _, validation_other = split_train_validation(split.images, split.labels, 100, split_seed=1)
    assert not torch.equal(validation_a.labels, validation_other.labels)


def test_normalize_matches_torchvision_to_tensor_and_normalize():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    pipeline = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    )
    expected = torch.stack([pipeline(image.numpy()) for image in images])  # (6, 1, 28, 28)
    result = normalize(images)
    assert result.shape == expected.shape and result.dtype == torch.float32
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(normalize(images, torch.channels_last), expected, rtol=0, atol=1e-6)
