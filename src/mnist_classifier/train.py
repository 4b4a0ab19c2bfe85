"""The training loop: data, model, optimiser, then one flat loop over epochs, top to bottom.

`train(config)` computes and returns a TrainResult; what the user sees while it runs goes
through a TrainingObserver, whose default does nothing. The console one is in reporting.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_classifier.batching import Split, normalize, shuffled_batches, split_train_validation
from mnist_classifier.checkpoint import build_payload, save_checkpoint
from mnist_classifier.config import TrainConfig
from mnist_classifier.data import MnistFiles, ensure_mnist, load_split
from mnist_classifier.device import autocast, memory_format_for, resolve_device, resolve_precision
from mnist_classifier.evaluate import evaluate
from mnist_classifier.model import SimpleCNN, count_parameters


@dataclass(frozen=True)
class TrainSetup:
    """What was decided before the first step, for the observer to show."""

    device: torch.device
    precision: str
    data: MnistFiles
    train_size: int
    validation_size: int
    model: torch.nn.Module
    parameter_count: int


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float  # 0..1, over the epoch's batches with dropout on (the lab's figure)
    validation_loss: float
    validation_accuracy: float  # 0..1
    seconds: float  # training steps only, without validation or saving
    images_per_second: float
    checkpoint: Path
    is_best: bool


@dataclass(frozen=True)
class TrainResult:
    config: TrainConfig
    device: str
    precision: str
    epochs: list[EpochResult] = field(default_factory=list)

    @property
    def best(self) -> EpochResult:
        return max(self.epochs, key=lambda result: result.validation_accuracy)

    @property
    def best_checkpoint(self) -> Path:
        return self.best.checkpoint.parent / "best_model.pt"


class TrainingObserver:
    """Hooks for progress display; every method is optional and none may change training."""

    def started(self, config: TrainConfig, setup: TrainSetup) -> None: ...

    def epoch_started(self, epoch: int, total_epochs: int, images_total: int) -> None: ...

    def batch_done(
        self, epoch: int, images_seen: int, images_total: int, loss: torch.Tensor
    ) -> None:
        """`loss` is the batch's mean loss as a tensor: reading it is the observer's choice."""

    def epoch_done(self, result: EpochResult) -> None: ...

    def finished(self, result: TrainResult) -> None: ...


def load_train_validation(config: TrainConfig) -> tuple[MnistFiles, Split, Split]:
    """The verified training images, split into the training part and the fixed hold-out."""
    mnist_files = ensure_mnist(config.data_dir)
    images, labels = load_split(config.data_dir, train=True)
    train_split, validation_split = split_train_validation(
        images, labels, config.validation_size, config.split_seed
    )
    if config.max_train_images:
        train_split = Split(
            train_split.images[: config.max_train_images],
            train_split.labels[: config.max_train_images],
        )
    return mnist_files, train_split, validation_split


def make_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule, stepped once per optimizer step."""
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
        )
    return None


def train(config: TrainConfig, observer: TrainingObserver | None = None) -> TrainResult:
    observer = observer or TrainingObserver()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    memory_format = memory_format_for(device)

    # Seeds first: the weights' initialisation, dropout and the batch order all follow from them.
    torch.manual_seed(config.seed)
    batch_order_generator = torch.Generator().manual_seed(config.seed)

    mnist_files, train_split, validation_split = load_train_validation(config)
    train_split, validation_split = train_split.to(device), validation_split.to(device)

    model = SimpleCNN().to(device=device, memory_format=memory_format)
    # The fused kernel updates all parameters in one pass: same arithmetic, fewer launches.
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, fused=device.type in ("cpu", "cuda") or None
    )
    scheduler = make_scheduler(
        config, optimizer, steps_per_epoch=-(-len(train_split) // config.batch_size)
    )
    # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 do not.
    grad_scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    output_dir = Path(config.output_dir)

    setup = TrainSetup(
        device=device,
        precision=precision,
        data=mnist_files,
        train_size=len(train_split),
        validation_size=len(validation_split),
        model=model,
        parameter_count=count_parameters(model),
    )
    observer.started(config, setup)
    result = TrainResult(config=config, device=str(device), precision=precision)
    best_validation_accuracy = -1.0

    for epoch in range(1, config.epochs + 1):
        observer.epoch_started(epoch, config.epochs, len(train_split))
        model.train()
        # Running sums stay on the device: reading them every step would stall a GPU.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        images_seen = 0
        epoch_start = time.perf_counter()

        for images, labels in shuffled_batches(
            train_split, config.batch_size, batch_order_generator
        ):
            with autocast(device, precision):
                logits = model(normalize(images, memory_format))  # (B, 10)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            grad_scaler.scale(loss).backward()
            grad_scaler.step(optimizer)
            grad_scaler.update()
            if scheduler is not None:
                scheduler.step()

            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
            images_seen += len(labels)
            observer.batch_done(epoch, images_seen, len(train_split), loss.detach())

        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - epoch_start

        validation = evaluate(
            model,
            validation_split,
            batch_size=config.eval_batch_size,
            device=device,
            precision=precision,
        )
        is_best = validation.accuracy > best_validation_accuracy
        best_validation_accuracy = max(best_validation_accuracy, validation.accuracy)

        train_loss = loss_sum.item() / images_seen
        train_accuracy = correct.item() / images_seen
        payload = build_payload(
            model=model,
            optimizer=optimizer,
            epoch=epoch,
            validation_loss=validation.loss,
            validation_accuracy=100.0 * validation.accuracy,
            config=config,
            extra={
                "train_loss": train_loss,
                "train_accuracy": 100.0 * train_accuracy,
                "best_accuracy": 100.0 * best_validation_accuracy,
                "precision": precision,
                "device": str(device),
                "data_sha256": dict(mnist_files.sha256),
                "torch_version": str(torch.__version__),  # TorchVersion is not a plain str
            },
        )
        checkpoint_path = output_dir / f"checkpoint_epoch_{epoch}.pt"
        save_checkpoint(checkpoint_path, payload)
        if is_best:
            save_checkpoint(output_dir / "best_model.pt", payload)

        epoch_result = EpochResult(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            validation_loss=validation.loss,
            validation_accuracy=validation.accuracy,
            seconds=train_seconds,
            images_per_second=images_seen / train_seconds,
            checkpoint=checkpoint_path,
            is_best=is_best,
        )
        result.epochs.append(epoch_result)
        observer.epoch_done(epoch_result)

    observer.finished(result)
    return result
