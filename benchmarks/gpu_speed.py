"""The fast preset on a CUDA GPU: its time to 99% with and without a CUDA graph, and the floor.

    python benchmarks/gpu_speed.py [--config configs/fast.yaml] [--seeds 3] [--set KEY=VALUE]

Trains the config once per seed in each of two ways, alternating in one process: the step's
kernels launched from Python (`cuda_graph=false`) and the step replayed as a CUDA graph
(`cuda_graph=true`). Before them, one untimed run pays CUDA's and cuDNN's one-time start; its
time is printed as the cold start a single `mnist train` pays. Each run reports its seconds of
training as `mnist train` times them (the epochs' steps, without validation or saving) and
the test accuracy of its last weights. No observer reads the GPU while the runs train.

The floor is the same step on one ready batch (normalise, forward, loss, backward and Adam,
all recorded as one CUDA graph) replayed back to back and timed with CUDA events, times the
steps the config trains for: what the GPU needs when nothing waits on Python.
"""

from __future__ import annotations

import statistics
import tempfile

import torch
import torch.nn.functional as F
from accuracy import per_seed_parser, test_evaluation  # this folder is on sys.path when run

from mnist_classifier.batching import normalize
from mnist_classifier.config import TrainConfig, load_config, parse_assignment
from mnist_classifier.cuda_graph import WARMUP_STEPS, GraphedStep
from mnist_classifier.device import autocast, memory_format_for, resolve_precision
from mnist_classifier.evaluation_report import load_test_data
from mnist_classifier.model import SimpleCNN
from mnist_classifier.train import load_train_validation, train

WAYS = {"launched": False, "graph": True}  # the name printed -> config.cuda_graph


def floor_seconds(config: TrainConfig, device: torch.device, steps: int) -> float:
    """The config's whole training step on a ready batch, as one graph, times `steps`."""
    precision = resolve_precision(config.precision, device)
    memory_format = memory_format_for(device)
    model = SimpleCNN(config.model).to(device=device, memory_format=memory_format)
    # capturable: Adam's own step count and learning rate live on the GPU, so that the
    # optimizer can be recorded in the graph too.
    optimizer = torch.optim.Adam(
        model.parameters(), lr=torch.tensor(config.lr, device=device), fused=True, capturable=True
    )
    images = torch.randint(0, 256, (config.batch_size, 28, 28), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (config.batch_size,), device=device)

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision, cache_enabled=False):
            logits = model(normalize(images, memory_format))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        loss.backward()
        optimizer.step()
        return loss.detach()

    # The training loop's own warm-up and recording; this graph holds Adam as well.
    graphed = GraphedStep(step, optimizer)
    for _ in range(WARMUP_STEPS + 1):  # the last call records the graph and replays it once
        graphed(images, labels)
    graph = graphed.graph
    for _ in range(20):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    timings = []
    for _ in range(5):
        start.record()
        for _ in range(steps):
            graph.replay()
        end.record()
        end.synchronize()
        timings.append(start.elapsed_time(end) / 1e3)
    return min(timings)


def main() -> None:
    parser = per_seed_parser(__doc__, "fast.yaml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    arguments = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_speed.py needs a CUDA GPU; none is visible to torch here")
    device = torch.device("cuda")
    overrides = {
        **dict(parse_assignment(assignment) for assignment in arguments.set),
        "device": "cuda",
        "data.data_dir": arguments.data_dir,
    }
    base = load_config(arguments.config, overrides)
    dataset = base.data.dataset
    data = load_train_validation(base)  # read and verified once, for every run
    test_data = load_test_data(arguments.data_dir, dataset)
    steps = base.epochs * -(-len(data.train_split) // base.batch_size)
    print(
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"precision {resolve_precision(base.precision, device)}"
    )
    print(
        f"Config: {arguments.config} {arguments.set or ''}: {len(data.train_split):,} images x "
        f"{base.epochs} epochs, batch {base.batch_size}, {steps} steps"
    )

    def run(seed: int, cuda_graph: bool):
        with tempfile.TemporaryDirectory() as output_dir:
            config = load_config(
                arguments.config,
                {**overrides, "seed": seed, "cuda_graph": cuda_graph, "output_dir": output_dir},
            )
            result = train(config, data=data)
            accuracy = test_evaluation(result.epochs[-1].checkpoint, test_data, device).accuracy
        return sum(epoch.seconds for epoch in result.epochs), accuracy

    cold_seconds, _ = run(1, True)
    print(f"Cold start (the process's first run, graph): {cold_seconds:.3f} s of training\n")
    print("| seed | " + " | ".join(f"{way}: s, test accuracy" for way in WAYS) + " |")
    print("|---:|" + "---:|" * len(WAYS))
    results = {way: [] for way in WAYS}
    for seed in range(1, arguments.seeds + 1):
        cells = []
        for way, cuda_graph in WAYS.items():
            seconds, accuracy = run(seed, cuda_graph)
            results[way].append((seconds, accuracy))
            cells.append(f"{seconds:.3f} s, {accuracy:.2%}")
        print(f"| {seed} | " + " | ".join(cells) + " |", flush=True)

    floor = floor_seconds(base, device, steps)
    print()
    for way, runs in results.items():
        seconds = statistics.median(run[0] for run in runs)
        accuracies = [run[1] for run in runs]
        print(
            f"{way}: median {seconds:.3f} s of training ({seconds / floor:.1f}x the floor), "
            f"median test accuracy {statistics.median(accuracies):.2%}, "
            f"lowest {min(accuracies):.2%}"
        )
    print(f"floor: {floor:.3f} s ({steps} steps of {floor / steps * 1e6:.0f} us, one graph each)")


if __name__ == "__main__":
    main()
