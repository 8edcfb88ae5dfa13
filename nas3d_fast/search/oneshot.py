"""Single-path one-shot search (SPEC §6 ``OneShotSearch``; the fine stage of C2FNAS §3.4, §4.1).

1. **Supernet training**: each step trains one uniformly sampled architecture's path through the supernet
   (``space.sample``, so every path is feasible by construction; ``supernet.child_weights``: only that
   path runs). The architecture of step s is drawn from a generator seeded by (seed, s), so a resumed
   search, and every process of a distributed one, trains the same paths.
2. **Ranking on inherited weights**: ``candidates`` distinct architectures (seeded; uniform, or proposed one
   at a time by C2FNAS's evolution told each score: ``proposer="evolution"``) are scored by the mean
   foreground Dice of the supernet's path on ``eval_batches`` patch batches of the architecture cases
   (held out from the weight training, the 4:1 split), all in eval mode. Each candidate is a trial of the
   part-2 trial store (``RUN/trials.db``): a search killed while ranking keeps the candidates already
   scored and never scores one twice (in a distributed search every process scores every candidate, as
   each score is averaged over them, and only the main process writes the store).
3. **Fine-tuning** (``finetune_top`` > 0): the top N candidates are extracted (``supernet.extract``, the
   inherited weights) and trained alone for ``finetune_steps`` steps on the weight cases (Adam,
   ``finetune_lr``), then scored again; the result is the best fine-tuned one (else the best inherited).

For c2fnas, the space is constructed with the coarse stage's ``topology``: this is then C2FNAS's fine
stage, a search over the cells' operations on that topology.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import torch

from .base import SupernetSearch
from .trials.searcher import Trial
from .trials.store import TrialStore


#: how the ranked candidates are chosen: uniformly at random, or by C2FNAS's evolution (part 2's
#: EvolutionSearch, asked one candidate at a time and told each inherited-weight Dice).
PROPOSERS = ("random", "evolution")


def _step_rng(seed: int, step: int, what: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step), int(what)]))


def mean_dice(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean foreground Dice of argmax(logits (B, K, *S)) against labels (B, 1, *S); classes absent from both
    prediction and truth are skipped (NaN when no class is present at all)."""
    pred, truth = logits.argmax(1), labels[:, 0].long()
    scores = []
    for c in range(1, logits.shape[1]):
        p, t = pred == c, truth == c
        denominator = int(p.sum()) + int(t.sum())
        if denominator:
            scores.append(2.0 * float((p & t).sum()) / denominator)
    return float(np.mean(scores)) if scores else float("nan")


class OneShotSearch(SupernetSearch):
    """See the module docstring. Options: ``candidates`` (K, default 20), ``eval_batches`` (4),
    ``finetune_top`` (N, default 0), ``finetune_steps`` (20), ``finetune_lr`` (1e-3), ``proposer`` (random or
    evolution, ``PROPOSERS``). The rest is
    :class:`~nas3d_fast.search.base.SupernetSearch`'s (no architecture steps: the logits stay untouched)."""

    name = "oneshot"

    def __init__(self, *args, candidates: int = 20, eval_batches: int = 4, finetune_top: int = 0,
                 finetune_steps: int = 20, finetune_lr: float = 1e-3, proposer: str = "random", **kwargs):
        if proposer not in PROPOSERS:
            raise ValueError(f"proposer must be one of {PROPOSERS}, got {proposer!r}")
        self.proposer = proposer
        for name, value, low in (("candidates", candidates, 1), ("eval_batches", eval_batches, 1),
                                 ("finetune_top", finetune_top, 0), ("finetune_steps", finetune_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if finetune_top > candidates:
            raise ValueError(f"finetune_top ({finetune_top}) cannot exceed candidates ({candidates})")
        if not (isinstance(finetune_lr, (int, float)) and finetune_lr > 0):
            raise ValueError(f"finetune_lr must be a number > 0, got {finetune_lr!r}")
        self.candidates, self.eval_batches = candidates, eval_batches
        self.finetune_top, self.finetune_steps, self.finetune_lr = finetune_top, finetune_steps, float(finetune_lr)
        self.result = None
        super().__init__(*args, **kwargs)
        self.last_arch = None

    def options(self) -> dict:
        return {"candidates": self.candidates, "eval_batches": self.eval_batches, "finetune_top": self.finetune_top,
                "finetune_steps": self.finetune_steps, "finetune_lr": self.finetune_lr, "proposer": self.proposer}

    # -- supernet training ---------------------------------------------------------------------------

    def path_weights(self, step: int, for_arch: bool) -> dict:
        self.last_arch = self.space.sample(_step_rng(self.config.seed, step, 0))
        return self.supernet.child_weights(self.last_arch)

    def arch_step_due(self, step: int) -> bool:
        return False

    def derive(self):
        """The ranked result once the ranking ran; during supernet training, the path of the last step."""
        if self.result is not None:
            return self.result
        return self.last_arch if self.last_arch is not None else self.space.sample(_step_rng(self.config.seed, 0, 0))

    # -- ranking -------------------------------------------------------------------------------------

    def _eval_set(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = []
        for batch in self.arch_batches(0):
            batches.append(batch)
            if len(batches) == self.eval_batches:
                break
        return batches

    @torch.no_grad()
    def score(self, net, batches, weights=None) -> float:
        """Mean Dice of ``net`` (the supernet with ``weights``, or a discrete network) over ``batches``,
        averaged over the processes of a distributed search."""
        net.eval()
        values = []
        for x, y in batches:
            x = x.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                out = net(x, weights) if weights is not None else net(x)
            values.append(mean_dice(out.float().cpu(), y))
        value = float(np.nanmean(values)) if not all(np.isnan(values)) else 0.0
        return self.group.mean(value)

    def finetune(self, arch) -> torch.nn.Module:
        """``arch`` extracted with the inherited weights and trained alone for ``finetune_steps`` steps."""
        net = copy.deepcopy(self.supernet.extract(arch)).to(self.device)
        torch.manual_seed(self.config.seed)
        opt = torch.optim.Adam(net.parameters(), lr=self.finetune_lr)
        net.train()
        for i, (x, y) in enumerate(self.weight_batches(0)):
            if i == self.finetune_steps:
                break
            x, y = x.to(self.device), y.to(self.device)
            loss = self.loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            self.group.average_gradients(list(net.parameters()))
            opt.step()
        return net

    def _evolved(self, batches) -> list:
        """The candidates as EvolutionSearch proposes them, scored on the inherited weights, through the trial
        search driver (its store, resume and searcher state) with an in-process evaluator."""
        from .trials import TrialSearch, TrialSearchConfig
        from .trials.evolution import EvolutionSearch

        if self.group.world > 1:
            raise ValueError("proposer='evolution' runs in one process; use proposer='random' under torchrun")
        space = self.space

        def evaluate(job) -> dict:
            arch = space.arch_from_json(job.arch_json)
            score = self.score(self.supernet, batches, self.supernet.child_weights(arch))
            return {"score": score, "metrics": {"inherited_dice": score}}

        clusters = min(8, max(1, self.candidates // 4))
        searcher = EvolutionSearch(space, seed=self.config.seed, clusters=clusters)
        config = TrialSearchConfig(trials=self.candidates, trial_steps=1, progress=False)
        TrialSearch(space, searcher, evaluate, self.out_dir, config,
                    {"supernet": {"options": self.options(), "steps": self.config.total_steps}}).run()
        with TrialStore(os.path.join(self.out_dir, "trials.db"), space) as store:
            return store.trials("done")

    def rank(self) -> None:
        """Steps 2 and 3 of the module docstring; sets ``self.result``."""
        space = self.space
        if self.proposer == "evolution":
            batches = self._eval_set()
            trials = self._evolved(batches)
            with TrialStore(os.path.join(self.out_dir, "trials.db"), space) as store:
                self._ranked(trials, batches, store, False, True)
            return
        store = None if not self.group.is_main else TrialStore(os.path.join(self.out_dir, "trials.db"), space, {
            "searcher": self.name, "space": space.name, "space_options": dict(space.options),
            "options": self.options(), "seed": self.config.seed, "steps": self.config.total_steps})
        try:
            rng = _step_rng(self.config.seed, 0, 1)
            archs, seen, draws = [], set(), 0
            while len(archs) < self.candidates and draws < 100 * self.candidates:
                arch = space.sample(rng)
                draws += 1
                code = tuple(space.encode(arch))
                if code not in seen:
                    seen.add(code)
                    archs.append(arch)
            batches = self._eval_set()
            main = self.group.is_main
            if main:
                store.requeue_running()
            by_code = {t.encoding: t for t in store.trials()} if main else {}
            rescore = self.group.world > 1  # every rank takes part in each score's all-reduce
            trials = []
            for arch in archs:
                code = tuple(space.encode(arch))
                known = by_code.get(code)
                if known is not None and known.status == "done" and not rescore:
                    trials.append(known)
                    continue
                score = self.score(self.supernet, batches, self.supernet.child_weights(arch))
                if not main:
                    trials.append(Trial(-1, arch, code, "done", score=score, metrics={"inherited_dice": score}))
                    continue
                if known is None or known.status != "done":
                    trial_id = known.id if known is not None else store.add(arch, 0)
                    store.start(trial_id, "inherited weights")
                    known = store.finish(trial_id, {"score": score, "metrics": {"inherited_dice": score}})
                trials.append(known)
            self._ranked(trials, batches, store, rescore, main)
        finally:
            if store is not None:
                store.close()


    def _ranked(self, trials: list, batches, store, rescore: bool, main: bool) -> None:
        """Rank the scored ``trials``, fine-tune the top N, set ``self.result`` and ``self.ranking``."""
        order = {t.encoding: i for i, t in enumerate(trials)}  # ties: the earlier candidate (same on every rank)
        ranked = sorted(trials, key=lambda t: (-t.score, order[t.encoding]))
        best = ranked[0]
        if self.finetune_top:
            tuned = []
            for t in ranked[: self.finetune_top]:
                value = None if rescore else t.metrics.get("finetuned_dice")
                if value is None:
                    value = self.score(self.finetune(t.arch), batches)
                if main and t.metrics.get("finetuned_dice") is None:
                    with store.transaction():
                        metrics = {**t.metrics, "finetuned_dice": value}
                        store.db.execute("UPDATE trials SET metrics = ? WHERE id = ?",
                                         (json.dumps(metrics), t.id))
                tuned.append((value, -order[t.encoding], t))
            best = max(tuned, key=lambda v: (v[0], v[1]))[2]
        self.result = best.arch
        self.ranking = [{"id": t.id, "inherited_dice": t.score, "encoding": list(t.encoding)} for t in ranked]

    def _finish(self) -> dict:
        if self.step >= self.config.total_steps or self.stopped_by_time:
            self.rank()
        return super()._finish()

    def finish_extra(self, arch) -> dict:
        return {"ranking": getattr(self, "ranking", [])}
