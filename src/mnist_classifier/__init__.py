"""mnist-classifier: a fast, verified, reproducible PyTorch pipeline for MNIST."""

__version__ = "0.1.0"
