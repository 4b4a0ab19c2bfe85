"""Where this project's files live by default, relative to the working directory (a leaf module).

The lab's layout: the data set under ./data, the model `python train_mnist.py` writes and
`python test_mnist.py` reads under ./models/staging/mnist/ (./models/staging/fashion-mnist/
for Fashion-MNIST), and the registry's stages under ./models/<stage>/<data set>/.
"""

import shlex
from pathlib import Path

DEFAULT_DATA_DIR = "./data"
DEFAULT_MODELS_DIR = "./models"
DEFAULT_RUNS_DIR = "./runs"
# The file name under which training keeps its best model, and a registry stage its model.
BEST_CHECKPOINT_NAME = "best_model.pt"


def staging_dir(dataset: str) -> str:
    """The staging folder of a data set's models: where train_mnist.py writes, and the folder of
    the checkpoint that test_mnist.py and `mnist evaluate` read by default."""
    return f"{DEFAULT_MODELS_DIR}/staging/{dataset}"


DEFAULT_STAGING_DIR = staging_dir("mnist")
# train_mnist.py's default --output-dir, written as its --help shows it: the staging folder of
# the data set the run trains on (the flag, --set or the --config file says which).
STAGING_DIR_OF_DATASET = staging_dir("<dataset>")
# The checkpoint evaluate, predict and export read when none is named, as their --help shows it.
CHECKPOINT_OF_DATASET = f"{STAGING_DIR_OF_DATASET}/{BEST_CHECKPOINT_NAME}"
# A run folder (<runs dir>/<UTC time>-<name>/) holds the run's resolved config under this name,
# from the run's start: that file is what tells a run folder from any other.
RUN_CONFIG_NAME = "config.yaml"
# The <UTC time> a run folder's name starts with (strftime), e.g. 20260314-093005.
RUN_TIME_FORMAT = "%Y%m%d-%H%M%S"


def is_run_folder(folder: Path) -> bool:
    return (Path(folder) / RUN_CONFIG_NAME).is_file()


def shell_command(*words: str | Path) -> str:
    """A command line to show the user, each word quoted as a POSIX shell needs it, so that it
    can be copied as it is even when a path holds a space or a quote."""
    return shlex.join(str(word) for word in words)
