"""Does torch.compile pay off for this model? Eager against compiled training steps, same device.

    python benchmarks/compile_speed.py [--device auto] [--batch-size 128] [--steps 300]

Prints images/s of each (after warm-up), the ratio, and the one-off compile time, so the
engine's default (eager) is decided by a measurement on the hardware at hand.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mnist_classifier.batching import normalize
from mnist_classifier.device import autocast, memory_format_for, resolve_device, resolve_precision
from mnist_classifier.model import SimpleCNN


def synthetic_training_step(model, optimizer, device, precision, batch_size):
    """One of the engine's training steps, as a function, on a fixed batch of random images."""
    memory_format = memory_format_for(device)
    images = torch.randint(0, 256, (batch_size, 28, 28), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)

    def step():
        with autocast(device, precision):
            logits = model(normalize(images, memory_format))
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def images_per_second(
    model, optimizer, device, precision, batch_size, steps
) -> tuple[float, float]:
    step = synthetic_training_step(model, optimizer, device, precision, batch_size)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    for _ in range(5):  # compiles here, if compiled
        step()
    synchronize()
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return batch_size * steps / (time.perf_counter() - start), warm_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    arguments = parser.parse_args()
    device = resolve_device(arguments.device)
    precision = resolve_precision(arguments.precision, device)

    results = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        model = SimpleCNN().to(device=device, memory_format=memory_format_for(device))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        runnable = torch.compile(model) if name == "compiled" else model
        results[name] = images_per_second(
            runnable, optimizer, device, precision, arguments.batch_size, arguments.steps
        )
        speed, warm_up = results[name]
        print(f"{name:>8}: {speed:10,.0f} images/s (first 5 steps {warm_up:.1f} s)")
    ratio = results["compiled"][0] / results["eager"][0]
    print(f"compiled/eager: {ratio:.2f}x on {device} ({precision}, batch {arguments.batch_size})")


if __name__ == "__main__":
    main()
