"""`python -m mnist_classifier` is the `mnist` command."""

from mnist_classifier.cli import app

app(prog_name="mnist")
