"""Learning-rate schedules and early stopping, against hand-computed values and torch's own."""

import math

import pytest
import torch

from mnist_classifier.config import make_config
from mnist_classifier.train import EarlyStopping, EpochResult, make_scheduler

STEPS_PER_EPOCH = 4
EPOCHS = 5


def _trace(overrides):
    """The learning rate of every optimizer step, stepped as the training loop steps it."""
    config = make_config({"epochs": EPOCHS, "lr": 0.01, **overrides})
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = make_scheduler(config, optimizer, STEPS_PER_EPOCH)
    rates = []
    for _ in range(EPOCHS * STEPS_PER_EPOCH):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return rates


def test_none_keeps_the_learning_rate():
    assert _trace({}) == [0.01] * EPOCHS * STEPS_PER_EPOCH


def test_step_decays_by_gamma_every_step_size_epochs():
    rates = _trace({"schedule.name": "step", "schedule.step_size": 2, "schedule.gamma": 0.5})
    expected = [0.01 * 0.5 ** ((step // STEPS_PER_EPOCH) // 2) for step in range(20)]
    assert rates == pytest.approx(expected, rel=1e-12)


def test_cosine_follows_the_half_cosine_to_zero():
    rates = _trace({"schedule.name": "cosine"})
    total = EPOCHS * STEPS_PER_EPOCH
    expected = [0.01 * (1 + math.cos(math.pi * step / total)) / 2 for step in range(total)]
    assert rates == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_warm_up_rises_linearly_from_a_tenth_then_hands_over():
    rates = _trace({"schedule.name": "cosine", "schedule.warmup_epochs": 1})
    warmup = STEPS_PER_EPOCH
    expected_warmup = [0.01 * (0.1 + 0.9 * step / warmup) for step in range(warmup)]
    assert rates[:warmup] == pytest.approx(expected_warmup, rel=1e-9)
    cosine_steps = EPOCHS * STEPS_PER_EPOCH - warmup
    expected_cosine = [
        0.01 * (1 + math.cos(math.pi * step / cosine_steps)) / 2 for step in range(cosine_steps)
    ]
    assert rates[warmup:] == pytest.approx(expected_cosine, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_a_warm_up_longer_than_the_run_rises_over_the_whole_run(name):
    """1e308 epochs is finite, so allowed, but infinite in steps: it overflowed round()."""
    total = EPOCHS * STEPS_PER_EPOCH
    assert _trace({"schedule.name": name, "schedule.warmup_epochs": 1e308}) == _trace(
        {"schedule.name": name, "schedule.warmup_epochs": (total - 1) / STEPS_PER_EPOCH}
    )


def test_onecycle_matches_torchs_scheduler():
    rates = _trace({"schedule.name": "onecycle"})
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.01)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=20)
    expected = []
    for _ in range(20):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert rates == pytest.approx(expected, rel=1e-12)
    assert max(rates) == pytest.approx(0.01) and rates[-1] < 1e-5


def _epoch(epoch, accuracy, loss=1.0):
    return EpochResult(epoch, 0.001, 1.0, 0.5, loss, accuracy, 1.0, 1.0, None, False)


def test_early_stopping_counts_epochs_without_enough_improvement():
    stopper = EarlyStopping("validation_accuracy", patience=2, min_delta=0.01)
    decisions = [
        stopper.should_stop(_epoch(epoch, accuracy))
        for epoch, accuracy in enumerate([0.90, 0.95, 0.955, 0.958], start=1)
    ]
    # 0.955 and 0.958 improve on 0.95 by less than min_delta: the second of them stops.
    assert decisions == [False, False, False, True]


def test_early_stopping_on_loss_wants_it_lower():
    stopper = EarlyStopping("validation_loss", patience=1, min_delta=0.0)
    assert not stopper.should_stop(_epoch(1, 0.9, loss=0.5))
    assert not stopper.should_stop(_epoch(2, 0.9, loss=0.4))
    assert stopper.should_stop(_epoch(3, 0.9, loss=0.45))


def test_patience_zero_never_stops():
    stopper = EarlyStopping("validation_accuracy", patience=0, min_delta=0.0)
    assert not any(stopper.should_stop(_epoch(epoch, 0.5)) for epoch in range(1, 10))
