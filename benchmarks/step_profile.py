"""Where a training step's time goes, and how close its biggest layer runs to the hardware.

    python benchmarks/step_profile.py [--batch-size 64] [--steps 50]

Profiles the engine's training step (the lab's settings, channels-last, fused Adam) on the CPU
and prints the operators that take the most time. Then it times conv2 alone, forward and
forward + backward, as GFLOP/s, beside a large single-precision matrix multiply: the rate
this machine's math library reaches at best.
"""

from __future__ import annotations

import argparse
import time

import torch
from compile_speed import synthetic_training_step  # this folder is on sys.path when run
from torch.profiler import ProfilerActivity, profile

from mnist_classifier.device import memory_format_for
from mnist_classifier.model import SimpleCNN

MATMUL_SIZE = 1024


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="profiled training steps")
    arguments = parser.parse_args()
    torch.manual_seed(0)

    cpu = torch.device("cpu")
    memory_format = memory_format_for(cpu)
    model = SimpleCNN().to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    step = synthetic_training_step(model, optimizer, cpu, "fp32", arguments.batch_size)
    step_ms = best_milliseconds(step, calls=arguments.steps)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(arguments.steps):
            step()
    print(
        f"Training step, batch {arguments.batch_size}: {step_ms:.1f} ms "
        f"({arguments.batch_size / step_ms * 1e3:,.0f} images/s), {torch.get_num_threads()} threads"
    )
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    # conv2: (B, 32, 14, 14) -> (B, 64, 14, 14), 3x3; the backward pass does twice the forward's
    # arithmetic (gradients of its input and of its weights).
    conv2 = model.conv2
    inputs = torch.randn(arguments.batch_size, 32, 14, 14).contiguous(memory_format=memory_format)
    inputs.requires_grad_(True)
    output_gradient = torch.randn_like(conv2(inputs))
    forward_flop = 2 * arguments.batch_size * 14 * 14 * 64 * 32 * 9

    def forward_and_backward():
        conv2(inputs).backward(output_gradient)

    forward_ms = best_milliseconds(lambda: conv2(inputs))
    both_ms = best_milliseconds(forward_and_backward)
    left, right = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    matmul_ms = best_milliseconds(lambda: left @ right, calls=10)
    print(
        f"conv2 forward: {forward_ms:.2f} ms, {forward_flop / forward_ms / 1e6:.0f} GFLOP/s\n"
        f"conv2 forward + backward: {both_ms:.2f} ms, "
        f"{3 * forward_flop / both_ms / 1e6:.0f} GFLOP/s "
        f"({both_ms / step_ms:.0%} of the training step)\n"
        f"{MATMUL_SIZE}x{MATMUL_SIZE} fp32 matrix multiply: "
        f"{2 * MATMUL_SIZE**3 / matmul_ms / 1e6:.0f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
