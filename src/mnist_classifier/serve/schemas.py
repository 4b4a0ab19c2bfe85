"""What `/predict`, `/predict/batch`, `/model` and `/health` accept and answer (the OpenAPI schema).

Requests are parsed here and nowhere else: a JSON body is validated by these models, so a wrong
shape, a NaN or an out-of-range pixel is refused with one message before any work is done.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mnist_classifier.datasets import IMAGE_SIDE, NUM_CLASSES

MAX_BATCH_IMAGES = 64

# JSON has no NaN, but pydantic accepts the NaN/Infinity literals unless told not to. Strict:
# a number only, never a string ("12") or a boolean, which lax mode would quietly read as one.
PixelValue = Annotated[float, Field(strict=True, ge=0.0, le=255.0, allow_inf_nan=False)]
PixelRow = Annotated[list[PixelValue], Field(min_length=IMAGE_SIDE, max_length=IMAGE_SIDE)]


class ImageInput(BaseModel):
    """One digit image: exactly one of `image` or `pixels`."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(
        default=None,
        description=(
            "A PNG, JPEG, BMP, GIF or TIFF file, base64-encoded (standard or URL-safe, in "
            "lines or not, padded or not); a `data:...;base64,` prefix (as canvas.toDataURL "
            "gives) is allowed. Any size; dark ink on light paper or light on dark."
        ),
        examples=["iVBORw0KGgoAAAANSUhEUgAA..."],
    )
    pixels: list[PixelRow] | None = Field(
        default=None,
        min_length=IMAGE_SIDE,
        max_length=IMAGE_SIDE,
        description=(
            "A 28x28 greyscale image as 28 rows of 28 numbers. Values are read as 0..1 when "
            "none is above 1, else as 0..255. Prepared like an uploaded image (cropped, scaled "
            "to 20x20 and centred by mass), so MNIST images pass through nearly unchanged."
        ),
    )

    @model_validator(mode="after")
    def exactly_one_source(self) -> ImageInput:
        if (self.image is None) == (self.pixels is None):
            raise ValueError("give exactly one of 'image' (base64 file) or 'pixels' (28x28)")
        return self


class BatchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[ImageInput] = Field(
        min_length=1,
        max_length=MAX_BATCH_IMAGES,
        description=f"1 to {MAX_BATCH_IMAGES} images, each as in POST /predict.",
    )


class ModelIdentity(BaseModel):
    digest: str = Field(description="SHA-256 of the served model file (checkpoint or .onnx).")
    stage: str | None = Field(description="Registry stage it was loaded from, if any.")


class PredictionResult(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    digit: int = Field(
        ge=0, le=9, description="The most probable class number (named for MNIST's digits)."
    )
    class_: int = Field(alias="class", ge=0, le=9, description="The most probable class.")
    label: str = Field(description="Its name: a digit, or e.g. 'Ankle boot' for Fashion-MNIST.")
    probabilities: list[float] = Field(
        min_length=NUM_CLASSES,
        max_length=NUM_CLASSES,
        description="Softmax probability of each class 0..9, in that order.",
    )
    preprocessed: list[list[int]] | None = Field(
        default=None,
        description="The 28x28 image the model saw (0..255, light ink on black), row by row.",
    )


class PredictionResponse(PredictionResult):
    model: ModelIdentity


class BatchPredictionResponse(BaseModel):
    predictions: list[PredictionResult] = Field(description="One per image, in request order.")
    model: ModelIdentity


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class ModelMetrics(BaseModel):
    """What the registry measured on the test set when it promoted the model."""

    test_accuracy: Fraction | None = Field(default=None, description="0..1")
    test_loss: float | None = None
    per_class_accuracy: list[Fraction] | None = Field(
        default=None,
        min_length=NUM_CLASSES,
        max_length=NUM_CLASSES,
        description="Accuracy (0..1) on the test images of each digit 0..9.",
    )


class ModelInfo(BaseModel):
    """What a client needs to know of the served model: never where it lives on this machine."""

    digest: str = Field(description="SHA-256 of the served model file.")
    stage: str | None = Field(description="Registry stage it was loaded from, if any.")
    backend: str = Field(description="torch or onnxruntime.")
    file_name: str = Field(description="The model file's name (not its path).")
    architecture: str
    epoch: int | None = Field(default=None, description="Training epoch of the checkpoint.")
    validation_accuracy: Fraction | None = Field(
        default=None, description="Validation accuracy (0..1) at that epoch."
    )
    metrics: ModelMetrics | None = Field(
        default=None, description="From the registry's model card, when it has one."
    )
    dataset: str = Field(default="mnist", description="What it was trained on: mnist, ...")
    class_names: list[str] = Field(
        default=[str(digit) for digit in range(NUM_CLASSES)],
        description="The name of each class, by class number.",
    )

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(digest=self.digest, stage=self.stage)


class HealthResponse(BaseModel):
    status: str = Field(examples=["ok"])
    model: ModelIdentity


class ErrorResponse(BaseModel):
    detail: str = Field(description="One line saying what was wrong with the request.")
