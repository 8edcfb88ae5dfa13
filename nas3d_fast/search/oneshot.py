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

**Memory budget** (``memory_budget`` bytes with ``target`` "cuda" or "cpu"; HyperSegNAS §3.2 step 1): the
ranked candidates are instead ``candidates`` distinct architectures whose predicted training-step peak
(``nas3d_fast.profile``, one patch of ``batch_size`` samples per process) lies in [memory_budget -
tolerance, memory_budget] (tolerance default 300 MiB, the paper's window, or the whole budget if smaller).
They are drawn *before* the supernet trains, so an impossible budget fails at once (``BudgetError``, before
any file is written), and kept in ``RUN/candidates.json`` (a resumed search reads them back).
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import torch

from .._atomic import write_json
from .._resume import check_resume
from ..profile.sample import MiB, BudgetError, sample_within
from .base import SupernetSearch
from .trials.searcher import Trial
from .trials.store import TrialStore


#: how the ranked candidates are chosen: uniformly at random, or by C2FNAS's evolution (part 2's
#: EvolutionSearch, asked one candidate at a time and told each inherited-weight Dice).
PROPOSERS = ("random", "evolution")
#: the allocators a memory budget is predicted for
MEMORY_TARGETS = ("cuda", "cpu")
#: HyperSegNAS's window: candidates within 300 MB below the budget
DEFAULT_TOLERANCE = 300 * MiB


def check_memory_budget(memory_budget, tolerance, target) -> int | None:
    """The window's tolerance (bytes; None: 300 MiB, or the whole budget if smaller); ValueError unless
    (memory_budget bytes, tolerance bytes, target) make a budget window. A budget of None takes no target."""
    if memory_budget is None:
        if target is not None:
            raise ValueError(f"target={target!r} applies to a memory budget; give memory_budget too")
        return None
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)) or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive int (bytes), got {memory_budget!r}")
    if target not in MEMORY_TARGETS:
        raise ValueError(f"a memory budget needs the target device whose allocator is predicted: target must be "
                         f"one of {MEMORY_TARGETS}, got {target!r}")
    if tolerance is None:
        return min(DEFAULT_TOLERANCE, int(memory_budget))
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0 (bytes), got {tolerance!r}")
    if tolerance > memory_budget:
        raise ValueError(f"tolerance ({tolerance / MiB:.1f} MiB) is above the memory budget "
                         f"({memory_budget / MiB:.1f} MiB): the window [budget - tolerance, budget] would reach "
                         f"below zero; use a tolerance of at most the budget")
    return int(tolerance)


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
    evolution, ``PROPOSERS``), ``memory_budget`` (bytes; None), ``tolerance`` (bytes; default 300 MiB, or the
    budget if smaller), ``target`` ("cuda" or "cpu", required with a budget), ``max_tries`` (draws per
    candidate inside the budget, 100).
    The rest is :class:`~nas3d_fast.search.base.SupernetSearch`'s (no architecture steps: the logits stay
    untouched)."""

    name = "oneshot"

    def __init__(self, *args, candidates: int = 20, eval_batches: int = 4, finetune_top: int = 0,
                 finetune_steps: int = 20, finetune_lr: float = 1e-3, proposer: str = "random",
                 memory_budget: int | None = None, tolerance: int | None = None, target: str | None = None,
                 max_tries: int = 100, **kwargs):
        if proposer not in PROPOSERS:
            raise ValueError(f"proposer must be one of {PROPOSERS}, got {proposer!r}")
        tolerance = check_memory_budget(memory_budget, tolerance, target)
        if memory_budget is not None and proposer != "random":
            raise ValueError("a memory budget ranks a constrained set drawn inside the budget (HyperSegNAS); "
                             "use proposer='random' with it")
        if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError(f"max_tries must be an int >= 1, got {max_tries!r}")
        self.memory_budget = None if memory_budget is None else int(memory_budget)
        self.tolerance, self.target, self.max_tries = tolerance, target, max_tries
        self.constrained: list | None = None  #: [(arch, predicted peak bytes)] with a memory budget
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
        out = {"candidates": self.candidates, "eval_batches": self.eval_batches, "finetune_top": self.finetune_top,
               "finetune_steps": self.finetune_steps, "finetune_lr": self.finetune_lr, "proposer": self.proposer}
        if self.memory_budget is not None:
            out.update(memory_budget=self.memory_budget, tolerance=self.tolerance, target=self.target,
                       max_tries=self.max_tries)
        return out

    # -- the constrained set ---------------------------------------------------------------------------

    def _input_shape(self) -> tuple[int, ...]:
        patch = self.meta.get("data", {}).get("patch")
        if not patch:
            raise ValueError("a memory budget needs meta['data']['patch'] (the training patch the peak is "
                             "predicted for)")
        return (int(self.meta["in_channels"]), *(int(p) for p in patch))

    def draw_constrained(self) -> list[tuple[object, int]]:
        """``candidates`` distinct architectures predicted inside [memory_budget - tolerance, memory_budget],
        with their predicted peaks (bytes), drawn from a generator seeded by the search's seed. BudgetError
        when not even one is found; fewer than ``candidates`` when the window holds fewer."""
        shape, batch = self._input_shape(), int(self.meta.get("data", {}).get("batch_size") or 1)
        rng, cache, found = _step_rng(self.config.seed, 0, 2), {}, []
        bar = None
        if self.config.progress and self.group.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.candidates, unit="candidate", desc="candidates inside the memory budget")
        try:
            while len(found) < self.candidates:
                try:
                    arch, report = sample_within(
                        self.space, self.memory_budget, shape, batch, rng, tolerance=self.tolerance,
                        max_tries=self.max_tries, num_classes=int(self.meta["num_classes"]), target=self.target,
                        return_report=True, cache=cache, exclude={a for a, _ in found})
                except BudgetError:
                    if not found:
                        raise
                    break  # the window holds no further architecture that max_tries draws find
                found.append((arch, int(report.peak_bytes)))
                if bar:
                    bar.update(1)
        finally:
            if bar:
                bar.close()
        return found

    def _constrained_path(self) -> str:
        return os.path.join(self.out_dir, "candidates.json")

    def _load_constrained(self) -> list | None:
        path = self._constrained_path()
        if not os.path.exists(path):
            return None
        with open(path) as f:
            saved = json.load(f)
        # refused before anything is redrawn or overwritten (the checkpoint's own check comes later)
        check_resume(saved.get("settings", {}), self._constrained_settings(), path, "search")
        return [(self.space.arch_from_json(json.dumps(c["arch"])), int(c["predicted_peak_bytes"]))
                for c in saved["candidates"]]

    def _constrained_settings(self) -> dict:
        return {"memory_budget": self.memory_budget, "tolerance": self.tolerance, "target": self.target,
                "candidates": self.candidates, "max_tries": self.max_tries, "seed": self.config.seed,
                "input_shape": list(self._input_shape()),
                "batch_size": int(self.meta.get("data", {}).get("batch_size") or 1)}

    def fit(self, resume: bool = True) -> dict:
        if self.memory_budget is not None:
            self.constrained = self._load_constrained() if resume else None
            if self.constrained is None:
                self.constrained = self.draw_constrained()  # BudgetError here, before any file is written
                if self.group.is_main:
                    os.makedirs(self.out_dir, exist_ok=True)
                    write_json({"settings": self._constrained_settings(), "candidates": [
                        {"arch": json.loads(a.to_json()), "predicted_peak_bytes": b} for a, b in self.constrained]},
                        self._constrained_path())
        return super().fit(resume=resume)

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
                out = self.supernet_output(x, weights) if weights is not None else net(x)
            values.append(mean_dice(out.float().cpu(), y))
        value = float(np.nanmean(values)) if not all(np.isnan(values)) else 0.0
        return self.group.mean(value)

    def supernet_output(self, x: torch.Tensor, weights) -> torch.Tensor:
        """The supernet's output for ``x`` on the path ``weights`` when candidates are scored."""
        return self.supernet(x, weights)

    def extract(self, arch) -> torch.nn.Module:
        """``arch``'s discrete network with the inherited weights (what fine-tuning starts from)."""
        return self.supernet.extract(arch)

    def finetune(self, arch) -> torch.nn.Module:
        """``arch`` extracted with the inherited weights and trained alone for ``finetune_steps`` steps."""
        net = copy.deepcopy(self.extract(arch)).to(self.device)
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
            archs = self._candidate_archs()
            predicted = dict(self.constrained or [])
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
                    known = store.finish(trial_id, {"score": score, "metrics": {"inherited_dice": score},
                                                    "predicted_memory": predicted.get(arch)})
                trials.append(known)
            self._ranked(trials, batches, store, rescore, main)
        finally:
            if store is not None:
                store.close()


    def _candidate_archs(self) -> list:
        """The architectures ranked with the random proposer: the constrained set with a memory budget,
        else ``candidates`` distinct uniform draws (seeded)."""
        if self.constrained is not None:
            return [a for a, _ in self.constrained]
        rng = _step_rng(self.config.seed, 0, 1)
        archs, seen, draws = [], set(), 0
        while len(archs) < self.candidates and draws < 100 * self.candidates:
            arch = self.space.sample(rng)
            draws += 1
            code = tuple(self.space.encode(arch))
            if code not in seen:
                seen.add(code)
                archs.append(arch)
        return archs

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
        self.ranking = [{"id": t.id, "inherited_dice": t.score, "encoding": list(t.encoding),
                         **({"predicted_memory": t.predicted_memory} if t.predicted_memory is not None else {})}
                        for t in ranked]

    def _finish(self) -> dict:
        if self.step >= self.config.total_steps or self.stopped_by_time:
            self.rank()
        return super()._finish()

    def finish_extra(self, arch) -> dict:
        out = {"ranking": getattr(self, "ranking", [])}
        if self.constrained is not None:
            peak = dict(self.constrained).get(arch)
            out["memory_budget"] = {
                "budget_bytes": self.memory_budget, "tolerance_bytes": self.tolerance, "target": self.target,
                "candidates_found": len(self.constrained), "predicted_peak_bytes": peak}
        return out
