"""Training speed, side by side: the conventional pipeline (A) against this project's engine (B).

    python benchmarks/train_speed.py [--rounds 2] [--steps N] [--fast-seeds 3] [--cpu-isa avx2]

A is the pipeline the lab describes, written plainly below: torchvision's MNIST dataset with
per-sample ToTensor + Normalize, DataLoader(batch_size=64, shuffle=True), the lab's SimpleCNN,
Adam 1e-3, fp32. B is `mnist_classifier.train.train` on the lab's settings. Both take the same
number of optimizer steps (one epoch of the 55,000 training images by default) on the same
machine, each in its own process so that its peak RSS is its own, alternating A, B, A, B.
Reported: the CPU flags that decide precision; images/s, the ratio B/A, peak RSS, test
accuracy; the fast preset's time to 99% against A's one epoch; and beside both, the compute
floor (`step_profile.py`'s step on a ready batch, times the steps).

`--cpu-isa avx2` measures an AVX-512 CPU as an AVX2-only one: the whole benchmark runs again
with torch's own kernels, oneDNN's and MKL's each held to AVX2, the nearest to a 2-core
AVX2-only machine that an AVX-512 one can give (same cores and clock, narrower vectors).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FAST_CONFIG = REPO_ROOT / "configs" / "fast.yaml"
LAB_BATCH_SIZE = 64
TRAIN_IMAGES = 55_000  # 60,000 less the 5,000 held out for validation
STEPS_PER_EPOCH = -(-TRAIN_IMAGES // LAB_BATCH_SIZE)  # 860: the last batch of an epoch is short


def run_baseline(data_dir: str, steps: int) -> dict:
    """(A) The conventional pipeline, as a tutorial writes it."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader
    from tutorial_pipeline import tutorial_datasets, tutorial_test_accuracy  # on sys.path

    from mnist_classifier.datasets import MNIST

    class LabSimpleCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.pool = nn.MaxPool2d(2, 2)
            self.dropout1 = nn.Dropout(0.25)
            self.fc1 = nn.Linear(64 * 7 * 7, 128)
            self.dropout2 = nn.Dropout(0.5)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.dropout1(self.pool(F.relu(self.conv2(x))))
            x = x.view(-1, 64 * 7 * 7)
            x = self.dropout2(F.relu(self.fc1(x)))
            return self.fc2(x)

    torch.manual_seed(1)
    # The same 55,000 training images as B: the hold-out is chosen by the same function.
    _, train_set, test_set = tutorial_datasets(data_dir, MNIST, 5000, split_seed=0)
    train_loader = DataLoader(train_set, LAB_BATCH_SIZE, shuffle=True)

    model = LabSimpleCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    images_seen, step = 0, 0
    start = time.perf_counter()
    while step < steps:
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            images_seen += len(labels)
            step += 1
            if step == steps:
                break
    seconds = time.perf_counter() - start
    return {
        "images_per_second": images_seen / seconds,
        "seconds": seconds,
        "test_accuracy": tutorial_test_accuracy(model, test_set),
    }


def run_engine(data_dir: str, steps: int, config_overrides: dict | None = None) -> dict:
    """(B) This project's engine, through the same `train()` the CLI calls."""
    from mnist_classifier.batching import Split
    from mnist_classifier.checkpoint import load_checkpoint
    from mnist_classifier.config import load_config
    from mnist_classifier.data import load_split
    from mnist_classifier.device import resolve_device
    from mnist_classifier.evaluate import evaluate
    from mnist_classifier.train import train

    # The CPU's figures, also on a machine with a GPU (where `auto` would pick the GPU).
    overrides = {"device": "cpu", **(config_overrides or {})}
    config_file = overrides.pop("config_file", None)
    if config_file is None:  # the lab's settings, for exactly `steps` optimizer steps
        if steps < STEPS_PER_EPOCH:  # part of an epoch: train on that many full batches
            overrides.update({"epochs": 1, "data.max_train_images": steps * LAB_BATCH_SIZE})
        else:
            overrides["epochs"] = steps // STEPS_PER_EPOCH
    with tempfile.TemporaryDirectory() as output_dir:
        config = load_config(
            config_file, {**overrides, "data.data_dir": data_dir, "output_dir": output_dir}
        )
        result = train(config)
        device = resolve_device(config.device)
        test_split = Split(*load_split(data_dir, train=False)).to(device)
        # Read back as every reader does: the model rebuilt from the checkpoint's own config.
        model = load_checkpoint(result.epochs[-1].checkpoint).model.to(device)
    accuracy = evaluate(model, test_split, device=device).accuracy
    seconds = sum(epoch.seconds for epoch in result.epochs)
    images = sum(epoch.images_per_second * epoch.seconds for epoch in result.epochs)
    return {"images_per_second": images / seconds, "seconds": seconds, "test_accuracy": accuracy}


def _in_child(role: str, arguments: argparse.Namespace, extra: dict | None = None) -> dict:
    """Run one measurement in a fresh process; its peak RSS comes from the kernel's accounting."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        role,
        "--data-dir",
        arguments.data_dir,
        "--steps",
        str(arguments.steps),
        "--overrides",
        json.dumps(extra or {}),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=REPO_ROOT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"benchmark worker {role} failed (status {status})")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


# The CPU flags that decide which precision and kernels the engine gets.
PRECISION_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")

# What holds each of torch's three kernel sources to AVX2; each is read once, when torch first
# uses that source, so they must be in the environment before the process imports torch.
AVX2_ONLY = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # convolutions
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # matrix multiplies
}


def _run_as_avx2_only() -> None:
    """Replace this process with the same command under AVX2_ONLY, unless it already is."""
    if all(os.environ.get(name) == value for name, value in AVX2_ONLY.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ONLY})


def _machine() -> str:
    import torch

    from mnist_classifier.device import resolve_precision

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    present = [flag for flag in PRECISION_FLAGS if flag in flags]
    absent = [flag for flag in PRECISION_FLAGS if flag not in flags]
    held = [f"{name}={os.environ[name]}" for name in AVX2_ONLY if name in os.environ]
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} of its {os.cpu_count()} cores usable here, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}\n"
        f"CPU flags: {', '.join(present) or 'none'} present; {', '.join(absent) or 'none'} absent"
        f" -> precision auto = {resolve_precision('auto', torch.device('cpu'))}, "
        f"kernels {torch.backends.cpu.get_cpu_capability()}"
        + (f"\nKernels held back by {', '.join(held)}" if held else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "data"))
    parser.add_argument("--rounds", type=int, default=2, help="A/B pairs, alternating")
    parser.add_argument(
        "--steps",
        type=int,
        default=STEPS_PER_EPOCH,
        help=f"optimizer steps each: fewer than {STEPS_PER_EPOCH} (one epoch), or whole epochs",
    )
    parser.add_argument(
        "--fast-seeds", type=int, default=3, help="seeds for the fast preset (0 to skip)"
    )
    parser.add_argument(
        "--cpu-isa",
        choices=["avx2"],
        help="hold torch, oneDNN and MKL to these instructions (an AVX2-only machine's kernels)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.steps < 1 or (
        arguments.steps > STEPS_PER_EPOCH and arguments.steps % STEPS_PER_EPOCH
    ):
        parser.error(
            f"--steps {arguments.steps}: give fewer than {STEPS_PER_EPOCH} steps (part of one "
            f"epoch) or a multiple of {STEPS_PER_EPOCH} (whole epochs), so A and B take the same"
        )

    if arguments.cpu_isa == "avx2":
        _run_as_avx2_only()  # before anything here imports torch; the workers inherit it
    if arguments.worker:
        overrides = json.loads(arguments.overrides)
        if arguments.worker == "A":
            result = run_baseline(arguments.data_dir, arguments.steps)
        else:
            result = run_engine(arguments.data_dir, arguments.steps, overrides)
        print(json.dumps(result))
        return

    from mnist_classifier.data import ensure_mnist

    ensure_mnist(arguments.data_dir)
    print(f"Machine: {_machine()}")
    print(
        f"Lab settings (Adam 1e-3, batch 64), {arguments.steps} optimizer steps each, "
        f"{arguments.rounds} alternating rounds\n"
    )
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    for round_index in range(arguments.rounds):
        for role in ("A", "B"):
            result = _in_child(role, arguments)
            runs[role].append(result)
            print(
                f"  round {round_index + 1} {role}: {result['images_per_second']:8,.0f} images/s  "
                f"peak RSS {result['peak_rss_mib']:6,.0f} MiB  "
                f"test accuracy {result['test_accuracy']:.2%}",
                flush=True,
            )

    def median(role, key):
        return statistics.median(run[key] for run in runs[role])

    print("\n| pipeline | images/s | peak RSS (MiB) | test accuracy |")
    print("|---|---:|---:|---:|")
    for role, name in (("A", "A: torchvision Dataset + DataLoader"), ("B", "B: this engine")):
        print(
            f"| {name} | {median(role, 'images_per_second'):,.0f} | "
            f"{median(role, 'peak_rss_mib'):,.0f} | {median(role, 'test_accuracy'):.2%} |"
        )
    ratio = median("B", "images_per_second") / median("A", "images_per_second")
    rss_ratio = median("B", "peak_rss_mib") / median("A", "peak_rss_mib")
    print(f"\nSpeed B/A: {ratio:.2f}x   Peak RSS B/A: {rss_ratio:.2f}x")

    from step_profile import floor_seconds  # this folder is on sys.path when run

    from mnist_classifier.config import ModelConfig, load_config

    # Both ratios are per epoch of the 55,000 training images at A's and B's median speeds.
    a_epoch = TRAIN_IMAGES / median("A", "images_per_second")
    b_epoch = TRAIN_IMAGES / median("B", "images_per_second")
    lab_floor = floor_seconds(LAB_BATCH_SIZE, ModelConfig(), TRAIN_IMAGES)
    summary = [
        f"1. Lab settings, one epoch: A {a_epoch:.1f} s, B {b_epoch:.1f} s: B/A speed "
        f"{ratio:.2f}x; compute floor {lab_floor:.1f} s (step_profile's step x {STEPS_PER_EPOCH})"
    ]
    if arguments.fast_seeds:
        fast = load_config(FAST_CONFIG)
        fast_images = fast.epochs * (fast.data.max_train_images or TRAIN_IMAGES)
        fast_seconds = _fast_preset(arguments)
        fast_floor = floor_seconds(fast.batch_size, fast.model, fast_images)
        summary.append(
            f"2. Fast preset to 99% ({fast_images:,} images, batch {fast.batch_size}): "
            f"{fast_seconds:.1f} s = {fast_seconds / a_epoch:.2f}x A's one epoch; "
            f"compute floor {fast_floor:.1f} s"
        )
    print("\n" + "\n".join(summary))


def _fast_preset(arguments: argparse.Namespace) -> float:
    """The fast preset's median seconds of training over seeds, each in its own process."""
    fast_config = str(FAST_CONFIG)
    print(f"\nFast preset (configs/fast.yaml), {arguments.fast_seeds} seeds:")
    results = []
    for seed in range(1, arguments.fast_seeds + 1):
        result = _in_child("B", arguments, {"config_file": fast_config, "seed": seed})
        results.append(result)
        print(
            f"  seed {seed}: {result['seconds']:.1f} s of training, "
            f"test accuracy {result['test_accuracy']:.2%}",
            flush=True,
        )
    seconds = statistics.median(result["seconds"] for result in results)
    lowest = min(result["test_accuracy"] for result in results)
    print(f"Time to 99%: median {seconds:.1f} s of training; lowest test accuracy {lowest:.2%}")
    return seconds


if __name__ == "__main__":
    main()
