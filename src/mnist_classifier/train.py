"""The training loop: data, model, optimiser, then one flat loop over epochs, top to bottom.

`train(config)` computes and returns a TrainResult. What the user sees while it runs, and
what is logged to disk beside the checkpoints, goes through TrainingObservers (reporting.py
prints, runs.py records); the default observer does nothing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from mnist_classifier.batching import (
    Split,
    normalize,
    shard,
    shuffled_batches,
    split_train_validation,
)
from mnist_classifier.checkpoint import (
    CheckpointContents,
    EarlierTrainingFound,
    LoadedCheckpoint,
    check_output_dir,
    delete_checkpoint,
    epoch_checkpoint_path,
    epoch_checkpoints,
    holding_checkpoint_dir,
    remove_stale_temporaries,
    require_dataset,
    save_checkpoint,
    training_checkpoints,
)
from mnist_classifier.config import ConfigError, TrainConfig, check_batch_size, patience_used_up
from mnist_classifier.cuda_graph import GraphedStep, StepOutputs
from mnist_classifier.data import MnistFiles, check_data_dir, ensure_dataset, read_split
from mnist_classifier.datasets import dataset_spec
from mnist_classifier.device import (
    autocast,
    available_memory_bytes,
    memory_format_for,
    resolve_device,
    resolve_precision,
    reuse_freed_memory,
)
from mnist_classifier.distributed import (
    all_reduce_sum,
    barrier,
    gather_objects,
    init_distributed,
    launch_rank,
    launch_world_size,
    rank_device,
    shutdown,
)
from mnist_classifier.evaluate import evaluate
from mnist_classifier.files import same_path
from mnist_classifier.model import SimpleCNN, count_parameters
from mnist_classifier.paths import BEST_CHECKPOINT_NAME
from mnist_classifier.resume import (
    check_epochs_left,
    check_resumable,
    restore_training_state,
    restoring,
    rng_states,
)


@dataclass(frozen=True)
class TrainSetup:
    """What was decided before the first step, for observers to show or record."""

    device: torch.device
    precision: str
    data: MnistFiles
    train_size: int
    validation_size: int
    model: torch.nn.Module
    parameter_count: int
    checkpoint_dir: Path
    validation_images: torch.Tensor  # the first validation images, uint8 (N, 28, 28), CPU
    validation_labels: torch.Tensor  # their labels, int64 (N,), CPU
    start_epoch: int  # 1, or the epoch after the checkpoint a resumed run continues from
    # The last epoch this start trains: config.epochs, or the checkpoint's own epoch when the
    # run had already finished and this start only completes its records.
    last_epoch: int
    start_step: int  # optimizer steps already taken: 0, or where a resumed run continues
    # A resumed run's finished epochs, as its checkpoint holds them (empty for a new run).
    earlier_epochs: tuple[EpochResult, ...] = ()
    replaced: tuple[Path, ...] = ()  # an earlier training's checkpoints, removed before starting


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    learning_rate: float  # at the epoch's first step
    train_loss: float
    train_accuracy: float  # 0..1, over the epoch's batches with dropout on (the lab's figure)
    validation_loss: float
    validation_accuracy: float  # 0..1
    seconds: float  # training steps only, without validation or saving
    images_per_second: float
    checkpoint: Path
    is_best: bool


@dataclass
class TrainResult:
    config: TrainConfig
    device: str
    precision: str
    checkpoint_dir: Path
    epochs: list[EpochResult] = field(default_factory=list)
    stop_reason: str = ""
    wall_seconds: float = 0.0

    @property
    def best(self) -> EpochResult:
        return max(self.epochs, key=lambda result: result.validation_accuracy)

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_dir / BEST_CHECKPOINT_NAME


class TrainingObserver:
    """Hooks for progress display and logging; none of them may change training."""

    def started(self, config: TrainConfig, setup: TrainSetup) -> None: ...

    def epoch_started(self, epoch: int, total_epochs: int, images_total: int) -> None: ...

    def batch_done(
        self,
        epoch: int,
        images_seen: int,
        images_total: int,
        loss: torch.Tensor,
        correct: torch.Tensor,
        step: int = 0,
        learning_rate: float = 0.0,
    ) -> None:
        """`loss` is the batch's mean loss and `correct` the epoch's running count of right
        answers, both as device tensors: reading them (a GPU sync) is the observer's choice.
        `step` counts optimizer steps over the whole run (1 after the first); `learning_rate`
        is the one this step used."""

    def epoch_done(self, result: EpochResult) -> None: ...

    def finished(self, result: TrainResult) -> None: ...

    def diverged(self, result: TrainResult, epoch: int) -> None:
        """Training diverged in `epoch` and is about to raise TrainingDiverged: `result` holds
        the epochs finished before it, and its stop_reason says what diverged."""


class Observers(TrainingObserver):
    """Several observers as one, called in order."""

    def __init__(self, observers: Sequence[TrainingObserver]) -> None:
        self.observers = list(observers)

    def started(self, config, setup):
        for observer in self.observers:
            observer.started(config, setup)

    def epoch_started(self, epoch, total_epochs, images_total):
        for observer in self.observers:
            observer.epoch_started(epoch, total_epochs, images_total)

    def batch_done(
        self, epoch, images_seen, images_total, loss, correct, step=0, learning_rate=0.0
    ):
        for observer in self.observers:
            observer.batch_done(
                epoch, images_seen, images_total, loss, correct, step, learning_rate
            )

    def epoch_done(self, result):
        for observer in self.observers:
            observer.epoch_done(result)

    def finished(self, result):
        for observer in self.observers:
            observer.finished(result)

    def diverged(self, result, epoch):
        for observer in self.observers:
            observer.diverged(result, epoch)


@dataclass(frozen=True)
class TrainData:
    """What training reads: where the images came from, and the two splits made of them."""

    files: MnistFiles  # route and verified digests, recorded with every checkpoint and run
    train_split: Split
    validation_split: Split


def split_for_training(
    config: TrainConfig, images: torch.Tensor, labels: torch.Tensor, files: MnistFiles
) -> TrainData:
    """The training images, split into the training part and the fixed hold-out per `config`."""
    data = config.data
    train_split, validation_split = split_train_validation(
        images, labels, data.validation_size, data.split_seed
    )
    if data.max_train_images:
        train_split = Split(
            train_split.images[: data.max_train_images], train_split.labels[: data.max_train_images]
        )
    return TrainData(files, train_split, validation_split)


def load_train_validation(config: TrainConfig) -> TrainData:
    """The verified training images of `config.data.dataset`, each file hashed once."""
    files = ensure_dataset(config.data.data_dir, config.data.dataset)
    images, labels = read_split(files, train=True)
    return split_for_training(config, images, labels, files)


def make_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """torch's own schedulers, stepped once per optimizer step (so epochs are in steps)."""
    schedule = config.schedule
    total_steps = config.epochs * steps_per_epoch
    # Capped before rounding: a warm-up of 1e308 epochs is a finite setting, but inf in steps.
    warmup_steps = round(min(schedule.warmup_epochs * steps_per_epoch, total_steps - 1))
    schedulers = torch.optim.lr_scheduler
    if schedule.name == "onecycle":
        rising_fraction = warmup_steps / total_steps if warmup_steps else 0.3  # torch's default
        return schedulers.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=rising_fraction
        )
    if schedule.name == "step":
        main = schedulers.StepLR(
            optimizer, step_size=schedule.step_size * steps_per_epoch, gamma=schedule.gamma
        )
    elif schedule.name == "cosine":
        main = schedulers.CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1))
    elif warmup_steps:
        main = schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        return None
    if not warmup_steps:
        return main
    warmup = schedulers.LinearLR(optimizer, start_factor=0.1, total_iters=warmup_steps)
    return schedulers.SequentialLR(optimizer, [warmup, main], milestones=[warmup_steps])


class EarlyStopping:
    """Counts epochs without an improvement larger than `min_delta` in the chosen metric."""

    def __init__(self, metric: str, patience: int, min_delta: float) -> None:
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.best = math.inf if metric == "validation_loss" else -math.inf
        self.epochs_without_improvement = 0

    def should_stop(self, result: EpochResult) -> bool:
        value = getattr(result, self.metric)
        if self.metric == "validation_loss":
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best, self.epochs_without_improvement = value, 0
        else:
            self.epochs_without_improvement += 1
        return self.stopped

    @property
    def stopped(self) -> bool:
        return patience_used_up(self.patience, self.epochs_without_improvement)

    def reason(self, epoch: int) -> str:
        return (
            f"early stopping after epoch {epoch}: {self.metric} did not improve by more "
            f"than {self.min_delta} for {self.patience} epochs"
        )


class TrainingDiverged(RuntimeError):
    """The loss or a metric became NaN or infinite; nothing from that epoch was saved."""


def _epoch_record(result: EpochResult) -> dict:
    return {**dataclasses.asdict(result), "checkpoint": str(result.checkpoint)}


def _epoch_from_record(record: dict) -> EpochResult:
    return EpochResult(**{**record, "checkpoint": Path(record["checkpoint"])})


# The memory a CPU training step holds at its peak per image of its batch, in fp32 (bf16 and
# fp16 hold less): the slope of peak memory against batch size measured by
# benchmarks/training_memory.py (313 and 318 KB in two runs on a 2-core Xeon, torch 2.14), with
# some room.
TRAINING_BYTES_PER_IMAGE = 340_000


def check_batch_fits(config: TrainConfig, device: torch.device, processes: int) -> None:
    """Refuse (ConfigError) a batch larger than a process's share of the training images, or
    one whose step needs more memory than this machine has free: the kernel would kill the
    process without a word. All `processes` train on this machine when it is a CPU; on a GPU
    an out-of-memory error is raised, and reported, while training."""
    check_batch_size(config, processes)
    available = available_memory_bytes() if device.type == "cpu" else None
    per_image = TRAINING_BYTES_PER_IMAGE * processes
    if available is None or config.batch_size * per_image <= available:
        return
    each = f" in each of the {processes} processes" if processes > 1 else ""
    raise ConfigError(
        f"batch_size {config.batch_size}{each} needs about "
        f"{config.batch_size * per_image / 1e9:.1f} GB of memory to train, and "
        f"{available / 1e9:.1f} GB is free here; choose at most "
        f"{max(1, available // per_image)} with --batch-size"
    )


def check_before_training(config: TrainConfig, processes: int | None = None) -> None:
    """Fail before any work when `config` cannot run here: a batch larger than a process's
    share of the training images or than the memory free (ConfigError), a device or precision
    this machine lacks (DeviceError), an output or runs folder that cannot be written
    (ConfigError), a data folder that is a file, or that cannot take the data set's files it
    lacks (DataError).

    `processes` is how many will train (`--nproc`); by default, this process's launch's."""
    device = resolve_device(config.device)
    check_batch_fits(config, device, processes or launch_world_size())
    resolve_precision(config.precision, device)
    if config.output_dir:
        check_output_dir(config.output_dir)
    # The run directory goes under runs_dir even when checkpoints go to output_dir.
    check_output_dir(config.runs_dir, "runs_dir", "--runs-dir")
    check_data_dir(config.data.data_dir, config.data.dataset)


def train(
    config: TrainConfig,
    observer: TrainingObserver | Sequence[TrainingObserver] | None = None,
    run_dir: Path | None = None,
    resume_from: LoadedCheckpoint | None = None,
    force: bool = False,
    data: TrainData | None = None,
    replace_earlier: bool = False,
) -> TrainResult:
    """Train per `config`; checkpoints go to `config.output_dir`, or else to `run_dir`.

    `data` is the prepared splits (e.g. tests' synthetic ones); without it, the verified data
    set named by `config.data` is obtained and split here.

    `resume_from` (from resume.load_resume_checkpoint) continues a run from an epoch checkpoint
    exactly where it stopped: same weights, optimizer and schedule state, early-stopping
    counters and random streams, so the result is bit-identical to a run that was never
    interrupted (on the same device).

    The process that writes the checkpoints holds their folder for the whole run: another
    training into it is refused (CheckpointDirInUse). A new run (not resumed) into a folder
    that holds an earlier training's checkpoints is refused (EarlierTrainingFound), since its
    best_model.pt would be replaced and its epochs left for a later resume to continue by
    mistake, unless `replace_earlier`: then those checkpoints are removed once the data is
    verified, before the first step.
    """
    check_batch_size(config, launch_world_size())  # before any folder is made or file removed
    # Under torchrun, rank 0 alone writes checkpoints (below), so it alone holds the folder.
    writes_checkpoints = launch_rank() in (None, 0)
    if not config.output_dir and run_dir is None and writes_checkpoints:
        raise ConfigError("output_dir is empty and there is no run directory to hold checkpoints")
    checkpoint_dir = Path(config.output_dir or run_dir or ".")
    with holding_checkpoint_dir(checkpoint_dir) if writes_checkpoints else nullcontext():
        earlier = training_checkpoints(checkpoint_dir) if writes_checkpoints else []
        if resume_from is not None and same_path(resume_from.path.parent, checkpoint_dir):
            earlier = []  # the resumed training's own
        if earlier and not replace_earlier:
            names = ", ".join(path.name for path in earlier)
            if resume_from is None:
                raise EarlierTrainingFound(
                    f"{checkpoint_dir} already holds an earlier training's checkpoints ({names}); "
                    "continue it with --resume auto, replace them with --force, or choose "
                    "another --output-dir"
                )
            # A checkpoint resumed from elsewhere (a registry stage, a moved folder) still
            # names the folder it was trained into, which may hold another training by now.
            raise EarlierTrainingFound(
                f"continuing {resume_from.path} would write into {checkpoint_dir}, which holds "
                f"another training's checkpoints ({names}); give the continued run another "
                "--output-dir, or replace them with --force"
            )
        return _train_holding_dir(
            config, observer, run_dir, resume_from, force, data, checkpoint_dir, earlier
        )


def _train_holding_dir(
    config: TrainConfig,
    observer: TrainingObserver | Sequence[TrainingObserver] | None,
    run_dir: Path | None,
    resume_from: LoadedCheckpoint | None,
    force: bool,
    data: TrainData | None,
    checkpoint_dir: Path,
    replaced: list[Path],
) -> TrainResult:
    """train()'s work, once its checkpoint folder is held; `replaced` are the earlier
    training's checkpoints to remove before the first step."""
    # --- Set-up: device, processes, data, model, optimiser ------------------------------------
    wall_start = time.perf_counter()
    device = resolve_device(config.device)
    # Under torchrun: join the group; rank 0 alone prints, logs and writes checkpoints.
    ranks = init_distributed(device, config.distributed_backend)
    device = rank_device(device, ranks)
    if not isinstance(observer, TrainingObserver):
        observer = Observers(observer or [])
    if not ranks.is_main:
        observer = TrainingObserver()
    precision = resolve_precision(config.precision, device)
    memory_format = memory_format_for(device)
    if device.type == "cpu":
        reuse_freed_memory()  # the CPU's steps then stop faulting their tensors in afresh
    normalization = dataset_spec(config.data.dataset).normalization
    if resume_from is not None:
        # Not even --force: these weights learned other classes from other images.
        require_dataset(resume_from, config.data.dataset, "resume")
        check_epochs_left(resume_from, config)

    # Seeds first: the weights' initialisation, dropout and the batch order all follow from them.
    torch.manual_seed(config.seed)
    batch_order_generator = torch.Generator().manual_seed(config.seed)

    if data is None:
        # Rank 0 obtains and verifies the data while the others wait, then they only verify it.
        if not ranks.is_main:
            barrier()
        data = load_train_validation(config)
        if ranks.is_main:
            barrier()
    mnist_files, train_split, validation_split = data.files, data.train_split, data.validation_split
    train_split, validation_split = train_split.to(device), validation_split.to(device)
    # Each rank validates its share; the sums are reduced, so all ranks report the same.
    validation_shard = Split(
        validation_split.images[ranks.rank :: ranks.world_size],
        validation_split.labels[ranks.rank :: ranks.world_size],
    )

    model = SimpleCNN(config.model).to(device=device, memory_format=memory_format)
    if ranks.enabled:
        # Same initial weights everywhere (DDP also broadcasts rank 0's), own dropout per rank.
        torch.manual_seed(config.seed + ranks.rank)
    # DDP averages gradients across ranks in backward; `model` stays the unwrapped module, so
    # checkpoints never carry a "module." prefix.
    trained_model = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if ranks.enabled
        else model
    )
    # The fused kernel updates all parameters in one pass: same arithmetic, fewer launches.
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, fused=device.type in ("cpu", "cuda") or None
    )
    steps_per_epoch = math.ceil(math.ceil(len(train_split) / ranks.world_size) / config.batch_size)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 do not.
    grad_scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    early_stopping = EarlyStopping(
        config.early_stopping.metric,
        config.early_stopping.patience,
        config.early_stopping.min_delta,
    )
    result = TrainResult(
        config=config, device=str(device), precision=precision, checkpoint_dir=checkpoint_dir
    )
    best_validation_accuracy = -1.0
    global_step = 0
    start_epoch, last_epoch = 1, config.epochs
    if ranks.is_main:
        remove_stale_temporaries(checkpoint_dir)  # what a killed save left behind
        # Only now, with the data verified: a start that fails costs the earlier run nothing.
        for path in replaced:
            delete_checkpoint(path)

    # --- Resume: continue exactly where the checkpoint left off -------------------------------
    if resume_from is not None:
        if not force:
            check_resumable(resume_from, config, dict(mnist_files.sha256), ranks.world_size)
        restore_training_state(
            resume_from, model, optimizer, scheduler, batch_order_generator, ranks.rank
        )
        with restoring("epoch history", resume_from.path):
            result.epochs.extend(_epoch_from_record(record) for record in resume_from.history)
        best_validation_accuracy = max(epoch.validation_accuracy for epoch in result.epochs)
        early_stopping.best, early_stopping.epochs_without_improvement = resume_from.early_stopping
        global_step = resume_from.global_step
        start_epoch = resume_from.epoch + 1
        if early_stopping.stopped:
            # The run had stopped early (it was killed while finishing): one never interrupted
            # trains no further epoch, so this start only completes the run's records.
            result.stop_reason = early_stopping.reason(resume_from.epoch)
            last_epoch = resume_from.epoch

    setup = TrainSetup(
        device=device,
        precision=precision,
        data=mnist_files,
        train_size=len(train_split),
        validation_size=len(validation_split),
        model=model,
        parameter_count=count_parameters(model),
        checkpoint_dir=checkpoint_dir,
        validation_images=validation_split.images[:64].cpu(),
        validation_labels=validation_split.labels[:64].cpu(),
        start_epoch=start_epoch,
        last_epoch=last_epoch,
        start_step=global_step,
        earlier_epochs=tuple(result.epochs),
        replaced=tuple(replaced),
    )
    observer.started(config, setup)

    def forward_backward(images: torch.Tensor, labels: torch.Tensor) -> StepOutputs:
        """The batch's gradients, summed into .grad; its mean loss and count of right answers."""
        with autocast(device, precision, cache_enabled=graphed_step is None):
            logits = trained_model(normalize(images, memory_format, normalization))  # (B, 10)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        grad_scaler.scale(loss).backward()
        return loss.detach(), (logits.argmax(dim=1) == labels).sum()

    # One CUDA process: the step is launch-bound there, and a graph launches it at once. (Not
    # under DDP, whose gradient hooks talk to other ranks, nor with fp16's loss scaling.)
    graphed_step = (
        GraphedStep(forward_backward, optimizer)
        if config.cuda_graph
        and device.type == "cuda"
        and not ranks.enabled
        and not grad_scaler.is_enabled()
        else None
    )
    images_this_rank = len(shard(torch.arange(len(train_split)), ranks))  # same every epoch
    stop_at_non_finite_loss = device.type == "cpu" and not ranks.enabled
    for epoch in range(start_epoch, last_epoch + 1):
        # --- Epoch: forward, loss, backward, step, schedule -----------------------------------
        observer.epoch_started(epoch, config.epochs, len(train_split))
        learning_rate = optimizer.param_groups[0]["lr"]
        model.train()
        # Running sums stay on the device: reading them every step would stall a GPU.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        images_seen = 0
        epoch_start = time.perf_counter()

        batches = shuffled_batches(train_split, config.batch_size, batch_order_generator, ranks)
        for images, labels in batches:
            if graphed_step is not None and len(labels) == config.batch_size:
                loss, batch_correct = graphed_step(images, labels)
            else:
                # Under a graph, .grad must stay the tensors that the graph writes into.
                optimizer.zero_grad(set_to_none=graphed_step is None)
                loss, batch_correct = forward_backward(images, labels)
            step_learning_rate = optimizer.param_groups[0]["lr"]
            grad_scaler.step(optimizer)
            grad_scaler.update()
            if scheduler is not None:
                scheduler.step()
            global_step += 1

            loss_sum += loss * len(labels)
            correct += batch_correct
            images_seen += len(labels)
            observer.batch_done(
                epoch,
                images_seen,
                images_this_rank,
                loss,
                correct,
                global_step,
                float(step_learning_rate),
            )
            # A loss that is no longer a number stays so, and the epoch would end in
            # TrainingDiverged (below) however long it ran on: on the CPU, where reading the sum
            # costs nothing, end it now. (A GPU would stall to read it; under DDP every rank
            # must stop at the same step.)
            if stop_at_non_finite_loss and not torch.isfinite(loss_sum):
                break

        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - epoch_start

        # --- Validate: the hold-out split, summed over ranks ----------------------------------
        validation = evaluate(
            model,
            validation_shard,
            batch_size=config.eval_batch_size,
            device=device,
            precision=precision,
            normalization=normalization,
        )
        # Sums over ranks (the identity in one process): every rank gets the same figures.
        (
            loss_sum,
            correct,
            images_seen,
            validation_loss_sum,
            validation_correct,
            validation_total,
        ) = all_reduce_sum(
            loss_sum,
            correct,
            torch.tensor(images_seen, device=device),
            torch.tensor(validation.loss * validation.total, device=device),
            torch.tensor(validation.correct, device=device),
            torch.tensor(validation.total, device=device),
        )
        train_loss = loss_sum.item() / images_seen.item()
        train_accuracy = correct.item() / images_seen.item()
        validation_loss = validation_loss_sum.item() / validation_total.item()
        validation_accuracy = validation_correct.item() / validation_total.item()
        if not (math.isfinite(train_loss) and math.isfinite(validation_loss)):
            result.stop_reason = (
                f"training diverged in epoch {epoch}: training loss {train_loss}, validation "
                f"loss {validation_loss}"
            )
            result.wall_seconds = time.perf_counter() - wall_start
            observer.diverged(result, epoch)
            raise TrainingDiverged(
                f"{result.stop_reason}; nothing from this epoch was saved. Try a lower --lr."
            )
        is_best = validation_accuracy > best_validation_accuracy
        best_validation_accuracy = max(best_validation_accuracy, validation_accuracy)
        checkpoint_path = epoch_checkpoint_path(checkpoint_dir, epoch)
        epoch_result = EpochResult(
            epoch=epoch,
            learning_rate=learning_rate,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            validation_loss=validation_loss,
            validation_accuracy=validation_accuracy,
            seconds=train_seconds,
            images_per_second=images_seen.item() / train_seconds,
            checkpoint=checkpoint_path,
            is_best=is_best,
        )
        result.epochs.append(epoch_result)
        stop = early_stopping.should_stop(epoch_result)

        # --- Save: rank 0 writes the epoch's checkpoint (and the best model) ------------------
        rng_by_rank = gather_objects(rng_states(batch_order_generator))  # a collective: all ranks
        if not ranks.is_main:
            if stop:
                break
            continue
        checkpoint = CheckpointContents(
            epoch=epoch,
            model_state_dict=model.state_dict(),
            optimizer_state_dict=optimizer.state_dict(),
            validation_loss=validation_loss,
            validation_accuracy=validation_accuracy,
            config=config,
            normalization=normalization,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            best_validation_accuracy=best_validation_accuracy,
            precision=precision,
            device=str(device),
            torch_version=str(torch.__version__),  # TorchVersion is not a plain str
            data_sha256=dict(mnist_files.sha256),
            run_dir=str(Path(run_dir).resolve()) if run_dir else "",
            scheduler_state_dict=scheduler.state_dict() if scheduler is not None else {},
            rng_state=rng_by_rank[0],
            rng_state_by_rank=rng_by_rank if ranks.enabled else [],
            world_size=ranks.world_size,
            global_step=global_step,
            early_stopping=(early_stopping.best, early_stopping.epochs_without_improvement),
            history=[_epoch_record(past) for past in result.epochs],
        )
        payload = checkpoint.to_payload()
        # The best model first: once an epoch's checkpoint exists, best_model.pt is at least
        # as new, whenever the process is killed.
        if is_best:
            save_checkpoint(checkpoint_dir / BEST_CHECKPOINT_NAME, payload)
        save_checkpoint(checkpoint_path, payload)
        if config.keep_last:
            keep = {checkpoint_path, result.best.checkpoint}
            if resume_from is not None:
                keep.add(resume_from.path)
            for old in epoch_checkpoints(checkpoint_dir)[config.keep_last :]:
                if old not in keep:
                    delete_checkpoint(old)

        observer.epoch_done(epoch_result)
        if stop:
            result.stop_reason = early_stopping.reason(epoch)
            break

    completed = f"all {config.epochs} epochs" if config.epochs != 1 else "its 1 epoch"
    result.stop_reason = result.stop_reason or f"completed {completed}"
    shutdown()
    result.wall_seconds = time.perf_counter() - wall_start
    observer.finished(result)
    return result
