"""One rank of a data-parallel run, for the distributed tests; start it with torchrun.

    torchrun --nproc-per-node 2 tests/ddp_worker.py CONFIG_JSON OUT_DIR [--fail-rank R]

Each rank saves the weights it ends with to OUT_DIR/rank<R>.pt, so the test can compare ranks.
`--fail-rank R` makes rank R raise during its first validation, to test that the job fails.
"""

import json
import os
import sys
from pathlib import Path

import torch

from mnist_classifier import train as train_module
from mnist_classifier.config import make_config


def main() -> None:
    config = make_config(json.loads(sys.argv[1]))
    out_dir = Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    if "--fail-rank" in sys.argv and rank == int(sys.argv[sys.argv.index("--fail-rank") + 1]):

        def broken_evaluate(*arguments, **keywords):
            raise RuntimeError(f"injected failure on rank {rank}")

        train_module.evaluate = broken_evaluate

    captured = {}
    original_ddp = train_module.DistributedDataParallel

    def keep_module(module, **keywords):
        captured["model"] = module
        return original_ddp(module, **keywords)

    train_module.DistributedDataParallel = keep_module
    train_module.train(config)
    torch.save(captured["model"].state_dict(), out_dir / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
