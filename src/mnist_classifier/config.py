"""The training configuration: one tree of frozen dataclasses, its defaults, strict loading.

Every default is the lab's setting unless its comment says otherwise. Values are resolved in
one order, each layer overriding the one before: dataclass defaults < YAML file < command
line (--set and flags, each key given once).
Anything unknown, of the wrong type or out of range is a ConfigError naming its dotted key,
raised before any data is read. The resolved config is saved inside every checkpoint and
beside every run.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

import yaml

from mnist_classifier.datasets import DATASET_NAMES, TRAIN_FILE_IMAGES
from mnist_classifier.files import read_regular_file
from mnist_classifier.paths import DEFAULT_DATA_DIR, DEFAULT_RUNS_DIR

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("none", "step", "cosine", "onecycle")
# Not a training setting but `mnist export`'s choice, kept with the others so that the command
# line offers it without importing torch.
EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")
EARLY_STOPPING_METRICS = ("validation_accuracy", "validation_loss")
# A config file is a few hundred bytes; the cap keeps a huge or endless file from being read.
MAX_CONFIG_FILE_BYTES = 64 * 1024
# Values quoted in error messages are cut to this many characters.
MAX_SHOWN_VALUE_CHARS = 80
# The run folder is "<UTC time>-<name>": well inside the 255 bytes a file name may have.
MAX_NAME_CHARS = 100
# Integers go to torch (seeds, sizes), which takes 64-bit values.
INT64_LIMIT = 2**63


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range; names the key."""


def shown(value: Any) -> str:
    """repr(value), cut to about 80 characters so a huge value cannot flood the message."""
    text = repr(value)
    if len(text) <= MAX_SHOWN_VALUE_CHARS:
        return text
    return f"{text[: MAX_SHOWN_VALUE_CHARS - 3]}..."


def _require(condition: bool, key: str, expectation: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key} {expectation} (got {shown(value)})")


def _check_types(section: Any) -> None:
    """Every field holds its annotated type; ints are accepted (and kept as floats) for floats."""
    hints = get_type_hints(type(section))
    for item in fields(section):
        expected, value = hints[item.name], getattr(section, item.name)
        key = f"{section.prefix}{item.name}"
        if is_dataclass(expected):
            if not isinstance(value, expected):
                raise ConfigError(f"{key} must be a mapping of its own keys (got {shown(value)})")
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            _require(abs(value) < INT64_LIMIT, key, "must be a number of sensible size", value)
            value = float(value)
            object.__setattr__(section, item.name, value)
        # bool is an int in Python; a yes/no where a number belongs is still a mistake.
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ConfigError(f"{key} must be of type {expected.__name__} (got {shown(value)})")
        if expected is float:
            _require(math.isfinite(value), key, "must be a finite number", value)
        if expected is int:
            _require(abs(value) < INT64_LIMIT, key, "must fit in 64 bits (below 2**63)", value)


@dataclass(frozen=True)
class DataConfig:
    prefix: ClassVar[str] = "data."
    # A fixed hold-out of the 60,000 training images picks the best model; the 10,000 test
    # images are only ever touched by evaluation.
    dataset: str = "mnist"  # mnist | fashion-mnist (datasets.py)
    data_dir: str = DEFAULT_DATA_DIR
    validation_size: int = 5000
    split_seed: int = 0  # fixed apart from `seed`, so every run validates on the same images
    max_train_images: int = 0  # 0 = all; a smaller number trains on a prefix, for quick trials

    def __post_init__(self) -> None:
        _check_types(self)
        _require(
            self.dataset in DATASET_NAMES,
            "data.dataset",
            f"must be one of {', '.join(DATASET_NAMES)}",
            self.dataset,
        )
        _require(
            0 < self.validation_size < TRAIN_FILE_IMAGES,
            "data.validation_size",
            f"must be between 1 and {TRAIN_FILE_IMAGES - 1:,}",
            self.validation_size,
        )
        _require(
            self.max_train_images >= 0,
            "data.max_train_images",
            "must be 0 (all) or more",
            self.max_train_images,
        )


@dataclass(frozen=True)
class ModelConfig:
    prefix: ClassVar[str] = "model."
    # The SimpleCNN's dropout probabilities. A model is rebuilt from these wherever a checkpoint
    # is read, so they travel in its config. 0 switches a layer off: in a run of one epoch or
    # less, dropout costs accuracy as well as the time of its random masks.
    dropout1: float = 0.25  # on conv2's pooled feature maps
    dropout2: float = 0.5  # on fc1's outputs

    def __post_init__(self) -> None:
        _check_types(self)
        for key in ("dropout1", "dropout2"):
            value = getattr(self, key)
            _require(0.0 <= value < 1.0, f"model.{key}", "must be in [0, 1)", value)


@dataclass(frozen=True)
class ScheduleConfig:
    prefix: ClassVar[str] = "schedule."
    name: str = "none"  # none | step | cosine | onecycle; stepped once per optimizer step
    warmup_epochs: float = 0.0  # linear warm-up from lr/10 (onecycle: the rising part)
    step_size: int = 1  # step: epochs between decays
    gamma: float = 0.1  # step: factor at each decay

    def __post_init__(self) -> None:
        _check_types(self)
        _require(
            self.name in SCHEDULES,
            "schedule.name",
            f"must be one of {', '.join(SCHEDULES)}",
            self.name,
        )
        _require(
            self.warmup_epochs >= 0,
            "schedule.warmup_epochs",
            "must be 0 or more",
            self.warmup_epochs,
        )
        _require(self.step_size >= 1, "schedule.step_size", "must be at least 1", self.step_size)
        _require(0 < self.gamma <= 1, "schedule.gamma", "must be in (0, 1]", self.gamma)


@dataclass(frozen=True)
class EarlyStoppingConfig:
    prefix: ClassVar[str] = "early_stopping."
    patience: int = 0  # epochs without improvement before stopping; 0 = never stop early
    metric: str = "validation_accuracy"  # validation_accuracy (higher is better) | validation_loss
    min_delta: float = 0.0  # an improvement must exceed this to count

    def __post_init__(self) -> None:
        _check_types(self)
        _require(
            self.patience >= 0, "early_stopping.patience", "must be 0 (off) or more", self.patience
        )
        _require(
            self.metric in EARLY_STOPPING_METRICS,
            "early_stopping.metric",
            f"must be one of {', '.join(EARLY_STOPPING_METRICS)}",
            self.metric,
        )
        _require(
            self.min_delta >= 0, "early_stopping.min_delta", "must be 0 or more", self.min_delta
        )


@dataclass(frozen=True)
class TrainConfig:
    prefix: ClassVar[str] = ""
    # --- optimisation: the lab's Adam settings ---
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3  # with a schedule, the peak learning rate
    label_smoothing: float = 0.0  # 0 = plain cross-entropy, as in the lab
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # --- reproducibility: same seed, same device -> same weights ---
    seed: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    # --- hardware ---
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; auto = bf16 only where it is native
    eval_batch_size: int = 1000  # evaluation keeps no activations for backward: big batches
    distributed_backend: str = (
        "auto"  # under torchrun: auto (nccl on CUDA, gloo on CPU) | gloo | nccl
    )
    # On a CUDA GPU in one process, record the training step once as a CUDA graph and replay it
    # (false: launch every kernel from Python each step). Elsewhere it changes nothing.
    cuda_graph: bool = True
    # --- output ---
    runs_dir: str = DEFAULT_RUNS_DIR  # each run writes <runs_dir>/<UTC time>-<name>/
    name: str = "run"
    output_dir: str = ""  # where checkpoints go; "" = the run's own directory
    keep_last: int = (
        0  # keep only the newest K epoch checkpoints (best and resumed-from stay); 0 = all
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.epochs >= 1, "epochs", "must be at least 1", self.epochs)
        _require(self.batch_size >= 1, "batch_size", "must be at least 1", self.batch_size)
        _require(self.lr > 0, "lr", "must be greater than 0", self.lr)
        _require(
            0.0 <= self.label_smoothing < 1.0,
            "label_smoothing",
            "must be in [0, 1)",
            self.label_smoothing,
        )
        _require(
            self.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}", self.device
        )
        _require(
            self.precision in PRECISIONS,
            "precision",
            f"must be one of {', '.join(PRECISIONS)}",
            self.precision,
        )
        _require(
            self.eval_batch_size >= 1, "eval_batch_size", "must be at least 1", self.eval_batch_size
        )
        _require(
            self.distributed_backend in ("auto", "gloo", "nccl"),
            "distributed_backend",
            "must be auto, gloo or nccl",
            self.distributed_backend,
        )
        _require(self.keep_last >= 0, "keep_last", "must be 0 (keep all) or more", self.keep_last)
        _require(
            bool(self.name)
            and "/" not in self.name
            and not self.name.startswith(".")
            and self.name.isprintable(),
            "name",
            "must be a plain folder name",
            self.name,
        )
        _require(
            len(self.name) <= MAX_NAME_CHARS,
            "name",
            f"must be at most {MAX_NAME_CHARS} characters",
            self.name,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def patience_used_up(patience: int, epochs_without_improvement: int) -> bool:
    """Whether early stopping with `patience` (0: never) stops after that many epochs in a row
    without improvement."""
    return 0 < patience <= epochs_without_improvement


def training_images(config: TrainConfig, processes: int = 1) -> int:
    """How many training images each of `processes` processes trains on per epoch, known from
    `config` alone: the training file's images less the validation hold-out, or the first
    data.max_train_images of them when that is fewer; a process's share is rounded up, as
    batching.shard deals it."""
    images = TRAIN_FILE_IMAGES - config.data.validation_size
    if config.data.max_train_images:
        images = min(images, config.data.max_train_images)
    return -(-images // processes)


def check_batch_size(config: TrainConfig, processes: int = 1) -> None:
    """Refuse a batch_size above the images a process trains on (ConfigError).

    Such a batch is the whole training split at once, which (train.check_batch_fits checks
    its memory too) rarely fits and is never meant. Checked before training, not in
    TrainConfig itself: a checkpoint saved with such a config still loads.
    """
    limit = training_images(config, processes)
    if config.batch_size <= limit:
        return
    share = f" each of the {processes} processes trains on" if processes > 1 else ""
    raise ConfigError(
        f"batch_size {config.batch_size} is more than the {limit} training images{share}; "
        f"choose at most {limit} with --batch-size"
    )


def _build(cls: type, values: Any, prefix: str) -> Any:
    """Construct `cls` from a nested dict, refusing keys it does not have."""
    if not isinstance(values, dict):
        raise ConfigError(
            f"{prefix.rstrip('.') or 'the config'} must be a mapping (got {shown(values)})"
        )
    known = {item.name: item for item in fields(cls)}
    hints = get_type_hints(cls)
    arguments = {}
    for key, value in values.items():
        if key not in known:
            choices = ", ".join(f"{prefix}{name}" for name in known)
            raise ConfigError(
                f"unknown config key {shown(f'{prefix}{key}')}; known keys here: {choices}"
            )
        section = hints[key]
        arguments[key] = (
            _build(section, value, f"{prefix}{key}.") if is_dataclass(section) else value
        )
    return cls(**arguments)


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: no aliases, no duplicate keys; 1e-4 is a float.

    An alias can expand a few hundred bytes into gigabytes (a "billion laughs"), and a
    config never needs one. YAML 1.1 reads 1e-4 (no dot) as text; people mean a number.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {shown(key)}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Copied, so that adding a resolver leaves yaml.SafeLoader itself unchanged.
_ConfigLoader.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str) -> Any:
    """YAML text -> plain values, with the strict loader; one-line yaml.YAMLError if invalid."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        where = f" (line {error.problem_mark.line + 1})" if error.problem_mark else ""
        raise yaml.YAMLError(f"{error.problem or error.context}{where}") from None
    except yaml.YAMLError as error:  # e.g. a control character: one line, not PyYAML's two
        raise yaml.YAMLError(str(error).strip().splitlines()[0]) from None
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """'schedule.name=cosine' -> ('schedule.name', 'cosine'); values are read as YAML scalars."""
    key, separator, text = assignment.partition("=")
    if not separator or not key.strip():
        raise ConfigError(
            f"--set needs KEY=VALUE, e.g. schedule.name=cosine (got {shown(assignment)})"
        )
    try:
        value = _parse_yaml(text)
    except yaml.YAMLError:
        value = text
    if value is None:
        raise ConfigError(
            f"--set {key.strip()} has no value; give one, e.g. --set {key.strip()}=VALUE"
        )
    return key.strip(), value


def explicit_settings(assignments: list[str], flags: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line as dotted keys: the --set `assignments` and the
    typed `flags` that were given (None means 'not given'). A key given twice is refused, as
    whichever value silently won would surprise someone."""
    settings: dict[str, Any] = {}
    for key, value in map(parse_assignment, assignments):
        if key in settings:
            raise ConfigError(f"{key} is given twice by --set; give it once")
        settings[key] = value
    for key, value in flags.items():
        if value is None:
            continue
        if key in settings:
            raise ConfigError(f"{key} is given both by --set and by its own option; give it once")
        settings[key] = value
    return settings


def _apply(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    *parents, leaf = dotted_key.split(".")
    node = tree
    for index, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[: index + 1])} is not a section")
        node = child
    node[leaf] = value


def read_config_file(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        text = read_regular_file(path, MAX_CONFIG_FILE_BYTES).decode("utf-8")
        tree = _parse_yaml(text)
    except OSError as error:
        raise ConfigError(
            f"config file {path} cannot be read ({error.strerror or error})"
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return tree


def load_config(
    path: Path | str | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults < the YAML file at `path` < `overrides` (dotted keys; None means 'not given')."""
    tree = read_config_file(path) if path else {}
    for dotted_key, value in (overrides or {}).items():
        if value is not None:
            _apply(tree, dotted_key, value)
    return _build(TrainConfig, tree, "")


def make_config(overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The defaults with dotted-key `overrides`: the programmatic twin of `mnist train --set`."""
    return load_config(None, overrides)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved in a checkpoint; a key this version does not know is an error."""
    return _build(TrainConfig, values, "")


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'schedule': {'name': 'step'}} -> {'schedule.name': 'step'}, for tables and hparams."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
