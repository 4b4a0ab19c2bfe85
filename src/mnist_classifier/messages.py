"""Others' errors in this project's voice, one line each (a leaf module: imports nothing of ours).

A library's exception may carry a message of many lines (onnxruntime's, torch's) or none; the
one line this project prints names what failed and, from such an error, only its first line.
"""


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
