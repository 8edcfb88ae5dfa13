"""Stand-alone training of a given list of architectures: the reference a weight-sharing ranking is judged by.

``nas3d search --searcher given --archs-from RUN`` trains, one trial each, the candidates that the
supernet search in ``RUN`` ranked (its ``summary.json`` ranking), so that ``nas3d search rank RUN --against
RUN2`` gives the rank correlation of the inherited-weight scores with stand-alone training (HyperSegNAS
Fig. 4).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import ClassVar

from ...spaces.base import Arch, ArchError, SearchSpace
from .searcher import TrialSearcher


def ranked_archs(run: str, space: SearchSpace) -> list[Arch]:
    """The architectures a supernet search ranked, best first: ``run/summary.json``'s ``ranking`` encodings
    decoded in ``space`` (the space and options of that search). ValueError naming the file otherwise."""
    path = os.path.join(run, "summary.json")
    if not os.path.isfile(path):
        raise ValueError(f"--archs-from {run}: no summary.json there (a finished oneshot or hypernet search "
                         f"writes its ranking into it)")
    with open(path) as f:
        summary = json.load(f)
    ranking = summary.get("ranking")
    if not ranking:
        raise ValueError(f"{path} holds no ranking: only the oneshot and hypernet searchers rank candidates")
    options = json.loads(json.dumps(dict(space.options)))  # tuples as the JSON file holds them: lists
    if summary.get("space") != space.name or summary.get("space_options", options) != options:
        raise ValueError(f"{path} is a search of {summary.get('space')!r} with options "
                         f"{summary.get('space_options')}; this one is {space.name!r} with {dict(space.options)}: "
                         f"give the same --space and --space-option values")
    try:
        return [space.decode(r["encoding"]) for r in ranking]
    except (ArchError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: a ranked encoding is not an architecture of {space.name}: {exc}") from exc


class GivenSearch(TrialSearcher):
    """Proposes ``archs`` in order, each once (duplicates dropped), then none: the search ends when they are
    all trained. Takes no sampler (no memory budget: the list is what is trained)."""

    name = "given"
    max_draws: ClassVar[int] = 1  # past the end of the list every proposal is a repeat: stop at once

    def __init__(self, space: SearchSpace, seed: int = 0, sampler=None, archs: Sequence[Arch] = ()):
        if sampler is not None:
            raise ValueError("the given searcher trains the architectures it is given: it takes no memory limit")
        super().__init__(space, seed=seed)
        unique, codes = [], set()
        for arch in archs:
            code = tuple(space.encode(arch))
            if code not in codes:
                codes.add(code)
                unique.append(arch)
        if not unique:
            raise ValueError("the given searcher needs at least one architecture (archs=, or --archs-from RUN)")
        self.archs, self.position = unique, 0

    def propose(self) -> Arch:
        if self.position < len(self.archs):
            self.position += 1
            return self.archs[self.position - 1]
        return self.archs[-1]  # seen already: suggest() gives up

    def options(self) -> dict:
        return {"archs": [list(self.space.encode(a)) for a in self.archs]}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.position = int(state["position"])
