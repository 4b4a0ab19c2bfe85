"""Does averaging the weights help a short run? Averages against the last weights, per seed.

    python benchmarks/weight_averaging.py [--config configs/fast.yaml] [--seeds 3]

Trains one model per seed as the config says. An observer, which only reads the model, keeps
exponential moving averages (EMA) of the weights at a few decays, updated after every step, and
a plain average over the run's last steps (stochastic weight averaging, SWA). Each average and
the last weights are evaluated on the 10,000 test images. Training itself is untouched: the
last-weights column is what `mnist train` gives.
"""

from __future__ import annotations

import statistics
import tempfile

from accuracy import per_seed_parser  # this folder is on sys.path when run
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mnist_classifier.config import load_config
from mnist_classifier.datasets import dataset_spec
from mnist_classifier.evaluate import evaluate
from mnist_classifier.evaluation_report import load_test_data
from mnist_classifier.train import TrainingObserver, train

EMA_DECAYS = (0.9, 0.98, 0.995)
SWA_LAST_FRACTIONS = (0.25, 0.5)  # average the weights after each of the last 25% / 50% of steps


class WeightAverages(TrainingObserver):
    """EMAs and tail averages of the model's weights, updated after every optimizer step."""

    def started(self, config, setup) -> None:
        total_steps = -(-setup.train_size // config.batch_size) * config.epochs
        self.model = setup.model
        self.averages = {
            f"EMA {decay}": AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay))
            for decay in EMA_DECAYS
        }
        self.swa_starts = {}
        for fraction in SWA_LAST_FRACTIONS:
            name = f"SWA, last {fraction:.0%} of steps"
            self.averages[name] = AveragedModel(self.model)
            self.swa_starts[name] = round(total_steps * (1 - fraction))

    def batch_done(
        self, epoch, images_seen, images_total, loss, correct, step=0, learning_rate=0.0
    ) -> None:
        for name, average in self.averages.items():
            if step > self.swa_starts.get(name, 0):
                average.update_parameters(self.model)


def main() -> None:
    arguments = per_seed_parser(__doc__, "fast.yaml").parse_args()

    dataset = load_config(arguments.config).data.dataset
    normalization = dataset_spec(dataset).normalization
    test_split = load_test_data(arguments.data_dir, dataset).split
    print(f"Config: {arguments.config}; test accuracy on {len(test_split):,} images")
    columns: dict[str, list[float]] = {}
    for seed in range(1, arguments.seeds + 1):
        with tempfile.TemporaryDirectory() as output_dir:
            settings = {"seed": seed, "data.data_dir": arguments.data_dir, "output_dir": output_dir}
            averages = WeightAverages()
            train(load_config(arguments.config, settings), [averages])
        models = {"last weights": averages.model}
        models.update({name: average.module for name, average in averages.averages.items()})
        for name, model in models.items():
            accuracy = evaluate(model, test_split, normalization=normalization).accuracy
            columns.setdefault(name, []).append(accuracy)
        print(f"seed {seed}: " + ", ".join(f"{n} {a[-1]:.2%}" for n, a in columns.items()))

    seeds = " | ".join(f"seed {seed}" for seed in range(1, arguments.seeds + 1))
    print(f"\n| weights | {seeds} | median |")
    print("|---|" + "---:|" * (arguments.seeds + 1))
    for name, accuracies in columns.items():
        cells = " | ".join(f"{accuracy:.2%}" for accuracy in accuracies)
        print(f"| {name} | {cells} | {statistics.median(accuracies):.2%} |")


if __name__ == "__main__":
    main()
