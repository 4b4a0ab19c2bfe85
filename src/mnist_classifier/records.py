"""Reading back the JSON records this project writes: a run's summary.json and provenance.json, a
registry stage's model_card.json.

A person can edit, copy over or damage any of them, so each is read as untrusted: a regular file
under a size cap, holding a JSON object whose fields that a command formats or serves have the
type it expects. Anything else is a RecordError whose one line names the file and the problem.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_classifier.config import shown
from mnist_classifier.files import read_regular_file


class RecordError(ValueError):
    """A record file cannot be used; the message names the file and why, in one line."""


@dataclass(frozen=True)
class FieldType:
    """What a record's field must hold for its readers: `accepts` it, or name it in a message."""

    description: str  # as a message names it: "a number"
    accepts: Callable[[Any], bool]


def _is_whole_number(value: Any) -> bool:
    # bool is an int to Python, but true is no epoch count.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # An int beyond a float's range (JSON allows 1e400 written out) cannot be shown as a
    # percentage or in seconds: formatting it raises OverflowError. NaN and Infinity (which
    # Python's json reads) are no figure a run records: training stops before saving them.
    return (isinstance(value, float) and math.isfinite(value)) or (
        _is_whole_number(value) and abs(value) <= sys.float_info.max
    )


WHOLE_NUMBER = FieldType("a whole number", _is_whole_number)
NUMBER = FieldType("a number", _is_number)
# An accuracy as records hold it: 0.9912, never 99.12 (which would be shown as 9912.00%).
FRACTION = FieldType("a number from 0 to 1", lambda value: _is_number(value) and 0 <= value <= 1)
TEXT = FieldType("text", lambda value: isinstance(value, str))
OBJECT = FieldType("a JSON object", lambda value: isinstance(value, dict))


def read_record_text(path: Path, max_bytes: int) -> str:
    """The UTF-8 text of a record file of at most `max_bytes`; RecordError for anything else."""
    try:
        return read_regular_file(path, max_bytes).decode("utf-8")
    except OSError as error:
        raise RecordError(f"{path} cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise RecordError(f"{path} is not UTF-8 text (byte {error.start})") from None


def read_json_record(path: Path, max_bytes: int) -> dict[str, Any]:
    """The JSON object in `path`; RecordError for anything else."""
    text = read_record_text(path, max_bytes)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    except RecursionError:
        raise RecordError(f"{path} is not valid JSON (nested too deeply)") from None
    except ValueError:  # a number of more digits than Python converts (sys.set_int_max_str_digits)
        raise RecordError(f"{path} holds a number too long to read") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path} holds a JSON {type(record).__name__}, not a record")
    return record


def check_field_types(
    path: Path, record: Mapping[str, Any], field_types: Mapping[str, FieldType], within: str = ""
) -> None:
    """RecordError naming the first of `field_types` that `record` holds with another type (a
    missing field is no error); `within` prefixes the field's name, e.g. "metrics."."""
    for key, field_type in field_types.items():
        if key in record and not field_type.accepts(record[key]):
            raise RecordError(
                f"{path}: {within}{key} is {shown(record[key])}, not {field_type.description}"
            )
