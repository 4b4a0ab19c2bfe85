"""Where a result came from: the git commit of this checkout and the software versions.

A leaf module (imports nothing of ours), so that the registry and the run records can both
stamp their files without importing each other or the training loop.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any


def git_commit() -> str | None:
    """The checkout's HEAD commit, or None outside a git checkout."""
    return _git("rev-parse", "HEAD")


def software_provenance() -> dict[str, Any]:
    """The commit (and whether tracked files differ from it), Python, torch and the platform."""
    from importlib.metadata import version

    import torch

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": git_commit(),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        # The installed distribution's version: importing torchvision for its __version__
        # would cost a training run 1.4 s, and training does not otherwise use it.
        "torchvision": version("torchvision"),
        "platform": platform.platform(),
    }


def _git(*arguments: str) -> str | None:
    try:
        completed = subprocess.run(
            ["git", *arguments],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None
