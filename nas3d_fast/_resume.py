"""The resume guard: a run continues from its checkpoint only with the settings that produced it.

Training and search checkpoints record the settings that decide their trajectory (optimiser, schedule,
loss, seed, data, space, architecture...). Resuming with any of them changed would silently mix two
runs, or fail deep inside ``load_state_dict``; :func:`check_resume` refuses it first and names every
setting that differs. Settings that do not change the trajectory (progress bars, the device, how often
to checkpoint) are simply left out of the dicts compared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping


def _plain(value):
    """JSON's view of a value, so that a tuple and the list it was saved as compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def differing_settings(saved: Mapping, current: Mapping, *, nested: bool = False) -> list[str]:
    """'name: checkpoint X, now Y' for every key of ``current`` whose value differs from ``saved``'s.
    Nested dicts are compared key by key (``data.patch``), keys set on one side only included. A top-level
    key the checkpoint does not record (a setting older checkpoints lack) is not compared."""
    out = []
    for key in sorted(current):
        if key not in saved:
            if nested:
                out.append(f"{key}: checkpoint not set, now {_plain(current[key])!r}")
            continue
        old, new = _plain(saved[key]), _plain(current[key])
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key}.{line}" for line in differing_settings(old, new, nested=True)]
            out += [f"{key}.{k}: checkpoint {old[k]!r}, now not set" for k in sorted(set(old) - set(new))]
        elif old != new:
            out.append(f"{key}: checkpoint {old!r}, now {new!r}")
    return out


def check_resume(saved: Mapping, current: Mapping, path: str, what: str = "run") -> None:
    """Raise ValueError listing each setting in which ``current`` differs from ``saved`` (the settings
    recorded in the checkpoint at ``path``)."""
    diffs = differing_settings(saved, current)
    if diffs:
        raise ValueError(
            f"cannot resume the {what} in {path}: it was started with other settings:\n  "
            + "\n  ".join(diffs)
            + "\nrerun with the checkpoint's settings, or start afresh (another output folder, or --no-resume)"
        )
