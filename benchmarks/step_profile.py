"""Where a training step's time goes, and how close its biggest layer runs to the hardware.

    python benchmarks/step_profile.py [--config configs/seed.yaml] [--batch-size N] [--steps 50]
                                      [--precision auto|fp32|bf16]

Profiles the engine's training step (the config's batch size and dropout, channels-last, fused
Adam, the precision `auto` picks unless given) on a ready batch on the CPU, and prints the
operators that take the most time; that step times the steps of an epoch is the epoch's compute
floor. Then it times conv2 alone, forward and forward + backward, as GFLOP/s, beside a large
matrix multiply: the rate this machine's math library reaches at best. Both in the step's
precision (bf16 under autocast, as the step runs it).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from compile_speed import synthetic_training_step  # this folder is on sys.path when run
from torch.profiler import ProfilerActivity, profile

from mnist_classifier.config import ModelConfig, load_config
from mnist_classifier.device import (
    autocast,
    memory_format_for,
    resolve_precision,
    reuse_freed_memory,
)
from mnist_classifier.model import SimpleCNN

MATMUL_SIZE = 1024
REPO_ROOT = Path(__file__).resolve().parent.parent


def best_milliseconds(function, repeats: int = 5, calls: int = 30) -> float:
    """The fastest of `repeats` timings: on a shared machine the minimum is the least noisy."""
    for _ in range(5):
        function()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        timings.append((time.perf_counter() - start) / calls * 1e3)
    return min(timings)


def ready_batch_step(
    batch_size: int, settings: ModelConfig, precision: str = "auto"
) -> tuple[SimpleCNN, Callable]:
    """The engine's CPU training step on one fixed batch: no data handling, only arithmetic."""
    torch.manual_seed(0)
    reuse_freed_memory()  # as train() does on the CPU: page faults are no part of the floor
    cpu = torch.device("cpu")
    model = SimpleCNN(settings).to(memory_format=memory_format_for(cpu))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    precision = resolve_precision(precision, cpu)
    return model, synthetic_training_step(model, optimizer, cpu, precision, batch_size)


def floor_seconds(batch_size: int, settings: ModelConfig, images: int) -> float:
    """The compute floor of training on `images`: the fastest step times the steps."""
    _, step = ready_batch_step(batch_size, settings)
    return best_milliseconds(step) / 1e3 * -(-images // batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=str(REPO_ROOT / "configs" / "seed.yaml"), help="a file in configs/"
    )
    parser.add_argument("--batch-size", type=int, help="default: the config's")
    parser.add_argument("--steps", type=int, default=50, help="profiled training steps")
    parser.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default="auto", help="default: auto's"
    )
    arguments = parser.parse_args()
    config = load_config(arguments.config)
    arguments.batch_size = arguments.batch_size or config.batch_size

    cpu = torch.device("cpu")
    precision = resolve_precision(arguments.precision, cpu)
    model, step = ready_batch_step(arguments.batch_size, config.model, precision)
    memory_format = memory_format_for(cpu)
    step_ms = best_milliseconds(step, calls=arguments.steps)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(arguments.steps):
            step()
    print(
        f"Training step, batch {arguments.batch_size}: {step_ms:.1f} ms "
        f"({arguments.batch_size / step_ms * 1e3:,.0f} images/s), {torch.get_num_threads()} "
        f"threads, {precision}"
    )
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    # conv2: (B, 32, 14, 14) -> (B, 64, 14, 14), 3x3; the backward pass does twice the forward's
    # arithmetic (gradients of its input and of its weights).
    conv2 = model.conv2
    inputs = torch.randn(arguments.batch_size, 32, 14, 14).contiguous(memory_format=memory_format)
    inputs.requires_grad_(True)
    forward_flop = 2 * arguments.batch_size * 14 * 14 * 64 * 32 * 9

    def forward():
        with autocast(cpu, precision):
            return conv2(inputs)

    output_gradient = torch.randn_like(forward())

    def forward_and_backward():
        forward().backward(output_gradient)

    forward_ms = best_milliseconds(forward)
    both_ms = best_milliseconds(forward_and_backward)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    left = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype)
    right = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype)
    matmul_ms = best_milliseconds(lambda: left @ right, calls=10)
    print(
        f"conv2 forward: {forward_ms:.2f} ms, {forward_flop / forward_ms / 1e6:.0f} GFLOP/s\n"
        f"conv2 forward + backward: {both_ms:.2f} ms, "
        f"{3 * forward_flop / both_ms / 1e6:.0f} GFLOP/s "
        f"({both_ms / step_ms:.0%} of the training step)\n"
        f"{MATMUL_SIZE}x{MATMUL_SIZE} {precision} matrix multiply: "
        f"{2 * MATMUL_SIZE**3 / matmul_ms / 1e6:.0f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
