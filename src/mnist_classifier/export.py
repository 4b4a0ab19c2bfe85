"""Export a checkpoint's model as ONNX, TorchScript or safetensors, and prove each export right.

Every export is checked at once against the eager model on the first 1,000 test images: the
exported model's logits must be within `PARITY_TOLERANCE` of the eager logits and give the same
predictions, or `ExportError` is raised. Files are written into a temporary folder beside the
output and moved into place only once the check passes, so a failed export leaves nothing
behind and an earlier export of the same name untouched. Never prints.

Every export carries `EXPORT_MARKER_KEY` (ONNX metadata, safetensors metadata and its sidecar,
a TorchScript extra file), so that `check_export_output` can tell an earlier export, which may
be replaced, from any other file at the output's name, which is never replaced.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnist_classifier.batching import normalize
from mnist_classifier.checkpoint import (
    ARCHITECTURE,
    LoadedCheckpoint,
    digest_path,
    export_format_of,
)
from mnist_classifier.config import EXPORT_FORMATS
from mnist_classifier.data import load_split
from mnist_classifier.datasets import IMAGE_SIDE, MNIST, NUM_CLASSES, DatasetSpec, Normalization
from mnist_classifier.files import (
    PRIVATE_FILE_MODE,
    NotOurFile,
    contents_if_regular,
    json_object_if_regular,
    refuse_to_replace,
    sha256_of,
    why_not_writable,
    write_json_atomically,
)
from mnist_classifier.model import SimpleCNN
from mnist_classifier.predict import ONNX_DATASET_KEY, ONNX_MEAN_KEY, ONNX_STD_KEY

PARITY_IMAGES = 1000
PARITY_TOLERANCE = 1e-4  # max |exported - eager| logit
ONNX_OPSET = 18
# Written into every export (its value: the format), and looked for before replacing a file.
EXPORT_MARKER_KEY = "mnist_classifier.export"
# A SimpleCNN export is under 2 MB: a larger file at the output's name is not one of ours.
MAX_EXPORT_BYTES = 64 << 20
MAX_SIDECAR_BYTES = 1 << 20


class ExportError(RuntimeError):
    """An export failed or does not match the eager model; one line, naming what."""


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_logit_difference: float
    predictions_identical: bool

    @property
    def passed(self) -> bool:
        return self.predictions_identical and self.max_abs_logit_difference <= PARITY_TOLERANCE


@dataclass(frozen=True)
class ExportResult:
    format: str
    output: Path
    files: tuple[Path, ...]  # everything written (the model, and a sidecar where there is one)
    parity: Parity
    checker: str  # what produced the exported logits


def exported_files(export_format: str, output: Path) -> tuple[Path, ...]:
    """The files an export to `output` writes: the model, and safetensors' JSON sidecar."""
    if export_format == "safetensors":
        return (output, _sidecar_of(output))
    return (output,)


# The file names each format goes by; an --output named for another format is a slip (an ONNX
# file named model.ts would be handed to torch.jit.load). Other names are the user's choice.
FORMAT_SUFFIXES = {
    "onnx": (".onnx",),
    "torchscript": (".ts", ".pt", ".pth", ".torchscript"),
    "safetensors": (".safetensors",),
}
FILE_KINDS = {"onnx": "an ONNX", "torchscript": "a TorchScript", "safetensors": "a safetensors"}


def check_export_output(export_format: str, output: Path, checkpoint: Path) -> None:
    """Before any work: ExportError if `output` is named for another format, or the folder it
    goes in cannot be written; NotOurFile if the export would replace `checkpoint` (or its
    digest file), or any file at the names it writes that is not an earlier export of ours."""
    instead = "choose another --output, or move that file away"
    if output.is_dir():
        raise NotOurFile(f"{output} is a folder; --output names the file to write")
    if problem := why_not_writable(output.parent):
        raise ExportError(f"cannot write {output}: {problem}; choose another --output")
    inputs = {
        checkpoint: "the checkpoint",
        digest_path(checkpoint): "the digest file of the checkpoint",
    }
    for target in exported_files(export_format, output):
        for path, what in inputs.items():
            # samefile: another spelling of the path, or a link to it, is the same file.
            if target.exists() and path.exists() and os.path.samefile(target, path):
                raise NotOurFile(f"{target} is {what} being exported; choose another --output")
        if target == output:
            refuse_to_replace(target, is_our_export, "an export of this project", instead)
        else:
            refuse_to_replace(target, _is_our_sidecar, "a safetensors sidecar of ours", instead)
    suffix = output.suffix.lower()
    for other, suffixes in FORMAT_SUFFIXES.items():
        if other != export_format and suffix in suffixes:
            wanted = FORMAT_SUFFIXES[export_format][0]
            raise ExportError(
                f"--output {output} is named as {FILE_KINDS[other]} file, but --format is "
                f"{export_format}: name it {output.with_suffix(wanted)}, or give --format {other}"
            )


def is_our_export(path: Path) -> bool:
    """Whether `path` is an ONNX, TorchScript or safetensors export that this project wrote:
    laid out as one (export_format_of) and carrying our marker where that format keeps it."""
    data = contents_if_regular(path, MAX_EXPORT_BYTES)
    if data is None:
        return False
    try:
        export_format = export_format_of(io.BytesIO(data), path.name)
        if export_format == "torchscript":  # the marker is an extra file in its zip
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                marker = f"/extra/{EXPORT_MARKER_KEY}"
                return any(name.endswith(marker) for name in archive.namelist())
        if export_format == "safetensors":  # in the metadata of its JSON header
            header_length = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_length])
            return EXPORT_MARKER_KEY in (header.get("__metadata__") or {})
        if export_format == "onnx":  # among its metadata_props
            import onnx

            keys = {entry.key for entry in onnx.load_model_from_string(data).metadata_props}
            # ONNX exports made before the marker carry their normalisation under our keys.
            return bool(keys & {EXPORT_MARKER_KEY, ONNX_MEAN_KEY})
        return False
    except Exception:  # zipfile, json and protobuf each reject other files their own way
        return False


def _is_our_sidecar(path: Path) -> bool:
    description = json_object_if_regular(path, MAX_SIDECAR_BYTES)
    return description is not None and EXPORT_MARKER_KEY in description


def _sidecar_of(output: Path) -> Path:
    return output.with_suffix(output.suffix + ".json")


def export_model(
    model: SimpleCNN,
    export_format: str,
    output: Path,
    parity_images: torch.Tensor,
    normalization: Normalization = MNIST.normalization,
    dataset: DatasetSpec = MNIST,
) -> ExportResult:
    """Write `model` in `export_format` to `output`, then check it on `parity_images` (uint8).

    The normalisation the model was trained with and its data set travel in the ONNX
    metadata and the safetensors sidecar, so a reader needs nothing else.
    """
    if export_format not in EXPORT_FORMATS:
        raise ExportError(
            f"format must be one of {', '.join(EXPORT_FORMATS)} (got {export_format!r})"
        )
    model = model.cpu().eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    inputs = normalize(parity_images.cpu(), normalization=normalization)  # (N, 1, 28, 28)
    with torch.inference_mode():
        eager_logits = model(inputs).numpy()
    exporter = {"onnx": _onnx, "torchscript": _torchscript, "safetensors": _safetensors}
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as staging:
        try:
            staged_files, exported_logits, checker = exporter[export_format](
                model, Path(staging) / output.name, inputs, normalization, dataset
            )
        except Exception as error:  # torch.onnx, onnx, jit and safetensors each raise their own
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ExportError(f"the {export_format} export to {output} failed: {detail}") from error
        parity = compare_logits(eager_logits, exported_logits)
        if not parity.passed:
            raise ExportError(
                f"{output} does not match the eager model on {parity.images} test images: "
                f"max |logit difference| {parity.max_abs_logit_difference:.3g} (limit "
                f"{PARITY_TOLERANCE:g}), predictions identical: {parity.predictions_identical}"
            )
        files = []
        for staged in staged_files:
            os.chmod(staged, PRIVATE_FILE_MODE)
            files.append(output.parent / staged.name)
            os.replace(staged, files[-1])
    return ExportResult(export_format, output, tuple(files), parity, checker)


def export_checkpoint(
    checkpoint: LoadedCheckpoint, export_format: str, output: Path, data_dir: Path | str
) -> ExportResult:
    """`export_model` on a loaded checkpoint, checked on the first PARITY_IMAGES test images of
    its data set (DataError if they do not verify); an output that cannot be written is an
    ExportError too."""
    images, _labels = load_split(data_dir, train=False, dataset=checkpoint.dataset.name)
    try:
        return export_model(
            checkpoint.model,
            export_format,
            output,
            images[:PARITY_IMAGES],
            checkpoint.normalization,
            checkpoint.dataset,
        )
    except OSError as error:
        raise ExportError(f"cannot write {output}: {error.strerror or error}") from None


def compare_logits(eager: np.ndarray, exported: np.ndarray) -> Parity:
    return Parity(
        images=len(eager),
        max_abs_logit_difference=float(np.abs(eager - exported).max()),
        predictions_identical=bool((eager.argmax(axis=1) == exported.argmax(axis=1)).all()),
    )


def _onnx(model, output: Path, inputs: torch.Tensor, normalization, dataset: DatasetSpec):
    import onnx
    import onnxruntime

    example = torch.zeros(2, 1, IMAGE_SIDE, IMAGE_SIDE)
    # The torch.export-based exporter (torch's default since 2.9); the TorchScript one is
    # deprecated. `verbose=False` keeps its progress lines off our stdout.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(output),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=ONNX_OPSET,
            external_data=False,  # one self-contained file, no model.onnx.data beside it
            verbose=False,
        )
    # Normalisation travels inside the file, so onnxruntime users need nothing else.
    onnx_model = onnx.load(str(output))
    metadata = {
        EXPORT_MARKER_KEY: "onnx",
        ONNX_MEAN_KEY: repr(normalization.mean),
        ONNX_STD_KEY: repr(normalization.std),
        ONNX_DATASET_KEY: dataset.name,
    }
    for key, value in metadata.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(output))

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": inputs.numpy()})[0]
    return (output,), logits, f"onnxruntime {onnxruntime.__version__}"


def _torchscript(model, output: Path, inputs: torch.Tensor, _normalization, _dataset):
    example = torch.zeros(2, 1, IMAGE_SIDE, IMAGE_SIDE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(output), _extra_files={EXPORT_MARKER_KEY: "torchscript"})
        loaded = torch.jit.load(str(output), map_location="cpu")
    with torch.inference_mode():
        logits = loaded(inputs).numpy()
    return (output,), logits, "torch.jit.load"


def _safetensors(model, output: Path, inputs: torch.Tensor, normalization, dataset: DatasetSpec):
    from safetensors.torch import load_file, save_file

    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    marker = {EXPORT_MARKER_KEY: "safetensors"}
    save_file(state, str(output), metadata={"architecture": ARCHITECTURE, **marker})
    sidecar = _sidecar_of(output)
    description = {
        **marker,
        "architecture": ARCHITECTURE,
        "input": {"shape": ["batch", 1, IMAGE_SIDE, IMAGE_SIDE], "dtype": "float32"},
        "output": {"shape": ["batch", NUM_CLASSES], "meaning": "logits (softmax for p)"},
        "model": dataclasses.asdict(model.settings),  # SimpleCNN(ModelConfig(**this)) loads it
        "normalization": {
            "mean": normalization.mean,
            "std": normalization.std,
            "formula": "(pixel / 255 - mean) / std, light on black",
        },
        "dataset": dataset.name,
        "class_names": list(dataset.class_names),
        "weights_file": output.name,
        "weights_sha256": sha256_of(output),
    }
    write_json_atomically(sidecar, description)

    rebuilt = SimpleCNN(model.settings)
    rebuilt.load_state_dict(load_file(str(output)))
    rebuilt.eval()
    with torch.inference_mode():
        logits = rebuilt(inputs).numpy()
    return (output, sidecar), logits, "safetensors load_file into a fresh SimpleCNN"
