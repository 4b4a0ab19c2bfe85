"""The training step's forward and backward, recorded once as a CUDA graph and then replayed.

This model is so small that on a GPU its step is bound by kernel launches: Python takes
longer to launch the step's ~70 kernels than the GPU takes to run them. A CUDA graph records
the kernels once and replays them with one launch. The optimizer step stays outside the
graph, so the learning-rate schedule, the optimizer's state and the checkpoints are the same
as without a graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import torch

from mnist_classifier.messages import first_line

# Real training steps run as usual before the recording: they make torch and cuDNN allocate
# their workspaces and pick their kernels, which must not happen while a graph is recorded.
WARMUP_STEPS = 3

StepOutputs = tuple[torch.Tensor, torch.Tensor]  # the batch's loss and its count of right answers
Outputs = TypeVar("Outputs")  # what the recorded function returns: StepOutputs in training


class CudaGraphError(RuntimeError):
    """The GPU or its driver could not record the step as a CUDA graph."""


class GraphedStep(Generic[Outputs]):
    """Calls `forward_backward(images, labels)` for full batches of one shape, as a graph.

    `forward_backward` must leave the batch's gradients summed into the parameters' `.grad`
    and return device tensors (it may also step a `capturable` optimizer, as the GPU
    benchmark's floor does). The gradients are zeroed in place, never set to None: the
    graph writes into the tensors that `.grad` held when it was recorded, so the optimizer
    must keep reading those. A batch of another shape (an epoch's short last batch) goes
    through `forward_backward` directly after `zero_grad(set_to_none=False)`.
    """

    def __init__(
        self,
        forward_backward: Callable[[torch.Tensor, torch.Tensor], Outputs],
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.forward_backward = forward_backward
        self.optimizer = optimizer
        self.steps_before_recording = WARMUP_STEPS
        self.graph: torch.cuda.CUDAGraph | None = None
        self.images = self.labels = None  # the graph's inputs, once recorded
        self.outputs: Outputs | None = None  # the graph's outputs, rewritten by each replay

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Outputs:
        if self.graph is None and self.steps_before_recording > 0:
            self.steps_before_recording -= 1
            return self._warmup_step(images, labels)
        if self.graph is None:
            self._record(images, labels)
        else:
            self.images.copy_(images)
            self.labels.copy_(labels)
        self.graph.replay()
        return self.outputs

    def _warmup_step(self, images: torch.Tensor, labels: torch.Tensor) -> Outputs:
        # On a side stream, as torch's CUDA graph notes ask, so that no work of the warm-up
        # is left pending on the stream the recording will use.
        side_stream = torch.cuda.Stream(images.device)
        side_stream.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side_stream):
            self.optimizer.zero_grad(set_to_none=False)
            outputs = self.forward_backward(images, labels)
        torch.cuda.current_stream(images.device).wait_stream(side_stream)
        return outputs

    def _record(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Records the step on this batch; recording runs nothing, so the replay that follows
        is this batch's step."""
        self.images, self.labels = images.clone(), labels.clone()
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.optimizer.zero_grad(set_to_none=False)
                self.outputs = self.forward_backward(self.images, self.labels)
        except RuntimeError as error:
            raise CudaGraphError(
                f"recording the training step as a CUDA graph failed ({first_line(error)}); "
                "train without one: --set cuda_graph=false"
            ) from error
