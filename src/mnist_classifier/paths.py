"""Where this project's files live by default, relative to the working directory (a leaf module).

The lab's layout: the data set under ./data, the model `python train_mnist.py` writes and
`python test_mnist.py` reads under ./models/staging/mnist/, and the registry's stages under
./models/<stage>/<data set>/.
"""

DEFAULT_DATA_DIR = "./data"
DEFAULT_MODELS_DIR = "./models"
DEFAULT_RUNS_DIR = "./runs"
# The file name under which training keeps its best model, and a registry stage its model.
BEST_CHECKPOINT_NAME = "best_model.pt"
DEFAULT_STAGING_DIR = f"{DEFAULT_MODELS_DIR}/staging/mnist"
DEFAULT_CHECKPOINT = f"{DEFAULT_STAGING_DIR}/{BEST_CHECKPOINT_NAME}"
