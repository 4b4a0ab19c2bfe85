"""Runs `train()` in a fresh process for the resume tests, recording what they compare.

    python tests/resume_worker.py CONFIG_JSON RECORD_PATH [--resume CHECKPOINT] [--no-rng-restore]

Trains on tests/synthetic_data.py's images. Records every step's loss, every epoch's sample
order and the final model and optimizer state into RECORD_PATH (torch.save).
`--no-rng-restore` turns the random-state restore into a no-op, to show that the exact-resume
test depends on it.
"""

import json
import sys
from pathlib import Path

import torch
from synthetic_data import synthetic_train_data

from mnist_classifier import resume as resume_module
from mnist_classifier import train as train_module
from mnist_classifier.config import make_config


class LossRecorder(train_module.TrainingObserver):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def batch_done(self, epoch, images_seen, images_total, loss, correct, *_step) -> None:
        self.losses.append(loss.item())


def main() -> None:
    config = make_config(json.loads(sys.argv[1]))
    record_path = Path(sys.argv[2])
    resume_from = None
    if "--resume" in sys.argv:
        path = Path(sys.argv[sys.argv.index("--resume") + 1])
        resume_from = resume_module.load_resume_checkpoint(path)
    if "--no-rng-restore" in sys.argv:
        resume_module.restore_rng_states = lambda states, generator: None

    orders: list[torch.Tensor] = []
    original_batches = train_module.shuffled_batches

    def recording_batches(split, batch_size, generator, ranks=None):
        labels = []
        for images, batch_labels in original_batches(split, batch_size, generator, ranks):
            labels.append(batch_labels)
            yield images, batch_labels
        orders.append(torch.cat(labels))

    train_module.shuffled_batches = recording_batches
    recorder = LossRecorder()
    train_module.train(config, recorder, resume_from=resume_from, data=synthetic_train_data(config))
    last = sorted(Path(config.output_dir).glob("checkpoint_epoch_*.pt"))[-1]
    state = torch.load(last, weights_only=True)
    torch.save(
        {
            "losses": recorder.losses,
            "orders": orders,
            "model": state["model_state_dict"],
            "optimizer": state["optimizer_state_dict"],
        },
        record_path,
    )


if __name__ == "__main__":
    main()
