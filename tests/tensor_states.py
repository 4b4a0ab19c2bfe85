"""Comparing saved training states (weights, optimizer state) exactly, tensor for tensor."""

from __future__ import annotations

import torch


def same_state(first, second) -> bool:
    """Whether two states (nested dicts, lists and tensors, as state_dict() gives them) are
    equal to the bit: the oracle of every exact-resume test."""
    if isinstance(first, torch.Tensor):
        return torch.equal(first, second)
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(
            same_state(first[key], second[key]) for key in first
        )
    if isinstance(first, (list, tuple)):
        return len(first) == len(second) and all(map(same_state, first, second))
    return first == second
