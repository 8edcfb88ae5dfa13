"""A space and an architecture from command-line words, the same way in every ``nas3d`` command that takes
them (``train``, ``profile``): ``--space-option KEY=VALUE`` and ``--arch ARCH.json|default|random[:SEED]``."""

from __future__ import annotations

import argparse
import json
import os

from .base import Arch, SearchSpace


def space_option(text: str) -> tuple[str, object]:
    """argparse type of ``--space-option KEY=VALUE``: (key, value parsed as JSON when it can be)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--space-option must be KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def read_arch(space: SearchSpace, arch: str) -> Arch:
    """An architecture of ``space`` from a JSON file (``Arch.to_json()``'s format), ``random[:SEED]``, or
    ``default`` (the space's ``default_arch()``, for spaces that have one). ValueError naming ``--arch``."""
    if arch == "default":
        if not hasattr(space, "default_arch"):
            raise ValueError(f"--arch default: space {space.name!r} has no default architecture")
        return space.default_arch()
    if arch.startswith("random"):
        _, _, seed = arch.partition(":")
        try:
            return space.sample(int(seed) if seed else 0)
        except ValueError as exc:
            raise ValueError(f"--arch {arch}: random takes an integer seed (random:SEED)") from exc
    if not os.path.isfile(arch):
        raise ValueError(f"--arch {arch} is not a file (an architecture JSON), default, nor random[:SEED]")
    with open(arch) as f:
        text = f.read()
    try:
        return space.arch_from_json(text)
    except ValueError as exc:
        raise ValueError(f"--arch {arch}: {exc}") from exc
