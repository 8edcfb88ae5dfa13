"""The loop every supernet search shares: alternating weight and architecture steps, one resumable state.

A :class:`SupernetSearch` trains a space's supernet (``space.supernet``) and its architecture logits
(``supernet.arch_logits()``, one (E, K) parameter per edge group) on two disjoint streams of patches: the
weight step on the *weight* cases, the architecture step on the *architecture* cases (SCNAS §3: a 4:1
split of the training cases). A subclass says how the supernet is weighted in each step
(:meth:`SupernetSearch.path_weights`), what the architecture loss adds to the segmentation loss
(:meth:`SupernetSearch.arch_objective`) and how the logits become an architecture (``space.derive``).

Files in ``out_dir``:

- ``checkpoint.pt``: the whole state (supernet weights, logits, both optimisers and their plateau rules,
  the Python/numpy/torch RNG states, the step, the epoch's running losses, the history), replaced
  atomically every ``checkpoint_every`` steps and at every epoch's end. Rerunning the same search
  continues from it; the batches of a step and its Gumbel noise depend on (seed, step) only, so on the
  CPU a search killed at any moment and resumed ends with bit-identical logits. Resuming with any
  setting that changes the trajectory is refused, naming each one (``nas3d_fast._resume``).
- ``search.csv``: one row per step (losses, learning rates, temperature, entropy, the subclass's terms).
- ``history.jsonl``: one line per epoch: the derived architecture and each group's op probabilities.
- ``arch.json``: the result (``nas3d train --arch RUN/arch.json`` trains it), ``summary.json`` and
  ``report.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .._atomic import atomic_write, write_json
from .._resume import check_resume
from ..spaces.base import Arch, SearchSpace
from ..train import checkpoint as ck
from ..train.losses import make_loss
from .distributed import ProcessGroup

SEARCH_FORMAT = "nas3d-search-1"
Batches = Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class SearchConfig:
    """Settings every supernet search shares. Learning rates and betas default to SCNAS §3's Adam settings
    (weights 0.025 / (0.1, 0.001), architecture 0.003 / (0.5, 0.999)); ``plateau_epochs`` epochs without a
    lower mean weight loss divide both learning rates by ``1 / plateau_factor`` (SCNAS: 20 epochs, 10x).

    ``time_budget`` is in minutes of wall-clock time; ``checkpoint_every`` in steps (0: epoch ends only).
    """

    epochs: int = 10
    steps_per_epoch: int = 50
    weight_lr: float = 0.025
    weight_betas: tuple[float, float] = (0.1, 0.001)
    weight_decay: float = 0.0
    arch_lr: float = 0.003
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 0.0
    plateau_epochs: int = 20
    plateau_factor: float = 0.1
    loss: str = "dice_ce"
    seed: int = 0
    amp: bool = True
    time_budget: float | None = None
    checkpoint_every: int = 0
    device: str | None = None
    progress: bool = True

    def __post_init__(self):
        for name in ("epochs", "steps_per_epoch", "plateau_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be an int >= 0 (steps), got {self.checkpoint_every!r}")
        for name in ("weight_lr", "arch_lr"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "arch_weight_decay"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("weight_betas", "arch_betas"):
            betas = tuple(float(b) for b in getattr(self, name))
            if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
                raise ValueError(f"{name} must be two numbers in [0, 1), got {getattr(self, name)}")
            setattr(self, name, betas)
        if not 0 < float(self.plateau_factor) < 1:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise ValueError(f"time_budget must be a positive number of minutes, got {self.time_budget}")
        make_loss(self.loss)  # validates the name

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


#: SearchConfig fields that may change between reruns of one search (they do not change its result).
UNTRACKED = ("checkpoint_every", "device", "progress")


def _entropy(logits: Mapping[str, torch.Tensor]) -> float:
    """Mean entropy (nats) of the rows' softmax over every group: log K at the start, 0 once decided."""
    rows = [torch.distributions.Categorical(logits=t.detach().float()).entropy() for t in logits.values()]
    return float(torch.cat(rows).mean())


class _Log:
    """search.csv and history.jsonl: appended as the search runs, cut back to the checkpoint's step on
    resume (rows of steps the checkpoint does not hold would be logged twice)."""

    def __init__(self, out_dir: str, columns: list[str]):
        self.csv_path = os.path.join(out_dir, "search.csv")
        self.history_path = os.path.join(out_dir, "history.jsonl")
        self.columns = columns

    def truncate_after(self, step: int) -> None:
        for path, key in ((self.csv_path, None), (self.history_path, "step")):
            if not os.path.exists(path):
                continue
            with open(path) as f:
                lines = f.read().splitlines()
            if key is None:  # csv: header, then rows starting with the step
                kept = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= step]
            else:
                kept = [ln for ln in lines if ln.strip() and json.loads(ln)[key] <= step]
            atomic_write(path, lambda f, kept=kept: f.write("".join(k + "\n" for k in kept)), mode="w")

    def row(self, values: dict) -> None:
        if not os.path.exists(self.csv_path):
            with open(self.csv_path, "w") as f:
                f.write(",".join(self.columns) + "\n")
        with open(self.csv_path, "a") as f:
            f.write(",".join(_cell(values.get(c, "")) for c in self.columns) + "\n")

    def history(self, entry: dict) -> None:
        with open(self.history_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def read_history(self) -> list[dict]:
        if not os.path.exists(self.history_path):
            return []
        with open(self.history_path) as f:
            return [json.loads(ln) for ln in f if ln.strip()]


def _cell(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


class SupernetSearch:
    """See the module docstring. Subclasses set ``name`` and implement :meth:`path_weights`; they may
    override :meth:`init_logits`, :meth:`arch_logits`, :meth:`make_weight_optimizer`, :meth:`arch_objective`,
    :meth:`arch_step_due`, :meth:`extra_row` and :meth:`options`.

    Args:
        space: the search space (its ``supernet`` and ``derive`` are used).
        config: :class:`SearchConfig`.
        out_dir: the run folder (module docstring).
        weight_batches, arch_batches: ``batches(first_step)`` iterators over (images (B, C, *patch), labels
            (B, 1, *patch)) of the weight and architecture cases, one batch per step, indexed by step
            (``nas3d_fast.train.batches.StepBatches``).
        meta: what the search runs on (in_channels, num_classes, data...); recorded, and compared on resume.
        supernet_options: keyword options of ``space.supernet``.
        on_step: called with the step after every step (and its checkpoint); tests kill the process there.
        group: the processes of a distributed search (``nas3d_fast.search.distributed``); one by default.
    """

    name = "supernet"
    #: search.csv columns of :meth:`arch_objective`'s terms and of :meth:`extra_row`, in order
    term_names: tuple[str, ...] = ()
    extra_names: tuple[str, ...] = ()

    def __init__(
        self,
        space: SearchSpace,
        config: SearchConfig,
        out_dir: str,
        weight_batches: Batches,
        arch_batches: Batches,
        meta: dict,
        supernet_options: dict | None = None,
        on_step: Callable[[int], None] | None = None,
        group: ProcessGroup | None = None,
    ):
        for key in ("in_channels", "num_classes"):
            if key not in meta:
                raise ValueError(f"meta must hold {key!r}")
        self.space, self.config, self.out_dir = space, config, out_dir
        self.weight_batches, self.arch_batches = weight_batches, arch_batches
        self.meta, self.on_step = dict(meta), on_step
        self.supernet_options = dict(supernet_options or {})
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.amp = bool(config.amp and self.device.type == "cuda")
        torch.manual_seed(config.seed)
        try:
            self.supernet = space.supernet(meta["in_channels"], meta["num_classes"], **self.supernet_options)
        except NotImplementedError as exc:  # a space without weight sharing (tautoml)
            raise ValueError(f"a supernet search needs a space with a supernet: {exc}") from exc
        self.logits = self.init_logits()
        self.supernet.to(self.device)
        self.logits.to(self.device)
        self.group = group or ProcessGroup()
        self.group.broadcast([*self.supernet.state_dict().values(), *self.logits.parameters()])
        self.loss_fn = make_loss(config.loss)
        self.weight_opt = self.make_weight_optimizer()
        self.arch_opt = torch.optim.Adam(
            self.logits.parameters(), lr=config.arch_lr, betas=config.arch_betas, weight_decay=config.arch_weight_decay
        )
        self.plateaus = [
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=config.plateau_factor, patience=config.plateau_epochs
            )
            for opt in (self.weight_opt, self.arch_opt)
        ]
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.step, self.elapsed = 0, 0.0
        self.epoch_losses: list[float] = []  #: weight losses of the running epoch (the plateau rule's input)
        self.recent_step_seconds: list[float] = []
        self.stopped_by_time = False
        columns = ["step", "epoch", "weight_loss", "arch_loss", "seg_loss", *self.term_names, "entropy", "weight_lr",
                   "arch_lr", *self.extra_names, "seconds"]
        self.log = _Log(out_dir, columns)
        self.checkpoint_path = os.path.join(out_dir, "checkpoint.pt")

    # -- what subclasses define ----------------------------------------------------------------------

    def init_logits(self) -> torch.nn.ParameterDict:
        """Fresh architecture parameters (default: ``supernet.arch_logits()``, near-uniform)."""
        return self.supernet.arch_logits()

    def make_weight_optimizer(self) -> torch.optim.Optimizer:
        """The supernet weights' optimiser (default: Adam with the config's weight_lr, weight_betas)."""
        cfg = self.config
        return torch.optim.Adam(
            self.supernet.parameters(), lr=cfg.weight_lr, betas=cfg.weight_betas, weight_decay=cfg.weight_decay
        )

    def path_weights(self, step: int, for_arch: bool) -> dict:
        """The supernet's ``weights`` argument for the weight step (``for_arch`` False: no gradient to the
        logits needed) or the architecture step of ``step`` (0-based)."""
        raise NotImplementedError

    def arch_objective(self, seg_loss: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """The architecture loss and its logged terms; by default the segmentation loss alone."""
        return seg_loss, {}

    def arch_step_due(self, step: int) -> bool:
        """Whether ``step`` (0-based) has an architecture step (DiNTS warms the weights up first)."""
        return True

    def arch_logits(self) -> dict[str, torch.Tensor]:
        """The (E, K) logits of each group, as ``space.derive`` takes them."""
        return {name: p.detach() for name, p in self.logits.items()}

    def extra_row(self, step: int) -> dict:
        """Further search.csv columns of ``step`` (e.g. the temperature)."""
        return {}

    def options(self) -> dict:
        """The subclass's settings: recorded in the checkpoint and compared on resume."""
        return {}

    def finish_extra(self, arch: Arch) -> dict:
        """Further summary.json entries for the result ``arch``; called on every rank, and the subclass
        writes its own result files (on the main rank only: ``self.group.is_main``)."""
        return {}

    # -- the state -----------------------------------------------------------------------------------

    def derive(self) -> Arch:
        return self.space.derive(self.arch_logits())

    def _trajectory(self, config: dict, options: dict, meta: dict, supernet_options: dict) -> dict:
        out = {k: v for k, v in config.items() if k not in UNTRACKED}
        out.update(searcher=self.name, searcher_options=options, supernet_options=supernet_options)
        out["meta"] = {k: v for k, v in meta.items() if k != "data"}
        out["meta"]["data"] = {k: v for k, v in meta.get("data", {}).items() if k != "root"}
        return out

    def state_dict(self) -> dict:
        return {
            "format": SEARCH_FORMAT,
            "searcher": self.name,
            "step": self.step,
            "elapsed": self.elapsed,
            "epoch_losses": list(self.epoch_losses),
            "recent_step_seconds": list(self.recent_step_seconds),
            "stopped_by_time": self.stopped_by_time,
            "supernet": self.supernet.state_dict(),
            "logits": self.logits.state_dict(),
            "weight_opt": self.weight_opt.state_dict(),
            "arch_opt": self.arch_opt.state_dict(),
            "plateaus": [p.state_dict() for p in self.plateaus],
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": ck.rng_state(),
            "config": self.config.to_dict(),
            "options": self.options(),
            "supernet_options": self.supernet_options,
            "space": self.space.name,
            "space_options": dict(self.space.options),
            "meta": self.meta,
        }

    def save(self) -> None:
        if self.group.is_main:  # the ranks hold the same state
            ck.atomic_save(self.state_dict(), self.checkpoint_path)

    def load(self, path: str) -> None:
        """Continue from the checkpoint at ``path`` (read onto the CPU, then copied into place); ValueError
        naming every setting that differs from the checkpoint's."""
        state = ck.read_checkpoint(path, SEARCH_FORMAT, "search")
        saved = self._trajectory(state["config"], state["options"], state["meta"], state["supernet_options"])
        saved.update(space=state["space"], space_options=state["space_options"])
        now = self._trajectory(self.config.to_dict(), self.options(), self.meta, self.supernet_options)
        now.update(space=self.space.name, space_options=dict(self.space.options))
        check_resume(saved, now, path, "search")
        self.supernet.load_state_dict(state["supernet"])
        self.logits.load_state_dict(state["logits"])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        for p, s in zip(self.plateaus, state["plateaus"]):
            p.load_state_dict(s)
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.epoch_losses = [float(v) for v in state["epoch_losses"]]
        self.recent_step_seconds = [float(v) for v in state["recent_step_seconds"]]
        self.stopped_by_time = bool(state["stopped_by_time"])
        ck.set_rng_state(state["rng"])
        self.load_extra(state)

    def load_extra(self, state: dict) -> None:
        """Restore what the subclass added to :meth:`state_dict` (called at the end of :meth:`load`)."""

    # -- one step ------------------------------------------------------------------------------------

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor, weights: dict) -> torch.Tensor:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            return self.loss_fn(self.supernet(x, weights), y)

    def _backward_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, what: str) -> float:
        if not torch.isfinite(loss):
            raise RuntimeError(f"{what} loss is {loss.item()} at step {self.step + 1}; lower the learning rates")
        self.weight_opt.zero_grad(set_to_none=True)
        self.arch_opt.zero_grad(set_to_none=True)
        params = [p for g in opt.param_groups for p in g["params"]]
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.group.average_gradients(params)
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            self.group.average_gradients(params)
            opt.step()
        return self.group.mean(float(loss.detach()))

    def _one_step(self, weight_batch, arch_batch) -> dict:
        step = self.step
        self.supernet.train()
        weights = self.path_weights(step, for_arch=False)
        weight_loss = self._backward_step(self._forward_loss(*weight_batch, weights), self.weight_opt, "weight")
        row = {"weight_loss": weight_loss, "arch_loss": "", "seg_loss": ""}
        if self.arch_step_due(step):
            row.update(self._arch_step(step, arch_batch))
        return row

    def _arch_step(self, step: int, arch_batch) -> dict:
        """The architecture step of ``step`` on ``arch_batch``; its search.csv entries (ENAS replaces it with
        its controller's update)."""
        weights = self.path_weights(step, for_arch=True)
        seg = self._forward_loss(*arch_batch, weights)
        total, terms = self.arch_objective(seg.float(), step)
        row = {
            "arch_loss": self._backward_step(total, self.arch_opt, "architecture"),
            "seg_loss": self.group.mean(float(seg.detach())),
        }
        row.update({k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in terms.items()})
        return row

    # -- the loop ------------------------------------------------------------------------------------

    def _out_of_time(self, step_seconds: float) -> bool:
        spent = bool(self.config.time_budget) and self.elapsed + step_seconds >= 60.0 * self.config.time_budget
        return self.group.any(spent)  # every rank stops at the same step

    def _end_epoch(self) -> None:
        cfg = self.config
        epoch = (self.step - 1) // cfg.steps_per_epoch  # the epoch that just ended (0-based)
        mean_loss = float(np.mean(self.epoch_losses)) if self.epoch_losses else math.nan
        for plateau in self.plateaus:
            plateau.step(mean_loss)
        self.epoch_losses = []
        self._record_history(epoch)

    def _record_history(self, epoch: int) -> None:
        if not self.group.is_main:
            return
        arch = self.derive()
        probs = {k: torch.softmax(v.float(), -1).cpu().numpy().round(6).tolist() for k, v in self.arch_logits().items()}
        self.log.history({"epoch": epoch, "step": self.step, "arch": json.loads(arch.to_json()), "probs": probs})

    def fit(self, resume: bool = True) -> dict:
        """Search to ``epochs * steps_per_epoch`` steps (or the time budget), checkpointing; with ``resume``,
        continue from ``out_dir/checkpoint.pt`` when it exists. Returns the summary (also in
        ``summary.json``); the result is in ``arch.json``."""
        cfg = self.config
        os.makedirs(self.out_dir, exist_ok=True)
        if resume and os.path.exists(self.checkpoint_path):
            self.load(self.checkpoint_path)
        if not self.group.is_main:
            pass
        elif resume:
            self.log.truncate_after(self.step)
        else:
            for path in (self.log.csv_path, self.log.history_path):
                if os.path.exists(path):
                    os.unlink(path)
        bar = None
        if cfg.progress and self.group.is_main:
            from tqdm import tqdm

            bar = tqdm(total=cfg.total_steps, initial=self.step, unit="step", desc=f"search ({self.name})")
        t0, e0 = time.monotonic(), self.elapsed
        try:
            if self.step < cfg.total_steps and not self.stopped_by_time:
                both = zip(self.weight_batches(self.step), self.arch_batches(self.step))
            else:
                both = iter(())
            while self.step < cfg.total_steps and not self.stopped_by_time:
                self.elapsed = e0 + time.monotonic() - t0
                step_seconds = float(np.median(self.recent_step_seconds)) if self.recent_step_seconds else 0.0
                if self._out_of_time(step_seconds):
                    self.stopped_by_time = True
                    break
                started = self.elapsed
                weight_batch, arch_batch = next(both)
                extra = self.extra_row(self.step)
                row = self._one_step(weight_batch, arch_batch)
                self.epoch_losses.append(row["weight_loss"])
                self.step += 1
                self.elapsed = e0 + time.monotonic() - t0
                self.recent_step_seconds = (self.recent_step_seconds + [self.elapsed - started])[-9:]
                if self.group.is_main:
                    self.log.row(
                        {
                            "step": self.step,
                            "epoch": (self.step - 1) // cfg.steps_per_epoch,
                            **row,
                            "entropy": _entropy(self.arch_logits()),
                            "weight_lr": self.weight_opt.param_groups[0]["lr"],
                            "arch_lr": self.arch_opt.param_groups[0]["lr"],
                            **extra,
                            "seconds": round(self.elapsed, 3),
                        }
                    )
                epoch_end = self.step % cfg.steps_per_epoch == 0
                if epoch_end:
                    self._end_epoch()
                if epoch_end or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                    self.save()
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['weight_loss']:.4f}", entropy=f"{_entropy(self.arch_logits()):.3f}")
                if self.on_step:
                    self.on_step(self.step)
            if self.stopped_by_time and self.step % cfg.steps_per_epoch:
                self._record_history(self.step // cfg.steps_per_epoch)  # the partial epoch's architecture
        finally:
            if bar:
                bar.close()
        self.save()
        return self._finish()

    def _finish(self) -> dict:
        arch = self.derive()  # the same on every rank, as the logits are
        summary = {
            "searcher": self.name,
            "space": self.space.name,
            "space_options": dict(self.space.options),
            "steps": self.step,
            "total_steps": self.config.total_steps,
            "stopped_by_time_budget": self.stopped_by_time,
            "search_seconds": round(self.elapsed, 3),
            "entropy": _entropy(self.arch_logits()),
            "arch": json.loads(arch.to_json()),
            "arch_path": os.path.join(self.out_dir, "arch.json"),
            "cost": None,
            "options": self.options(),
            "config": self.config.to_dict(),
        }
        try:
            patch = self.meta.get("data", {}).get("patch")
            if patch:
                cost = self.space.cost(arch, (self.meta["in_channels"], *patch), self.meta["num_classes"])
                summary["cost"] = {"params": cost.params, "flops": cost.flops, "patch": list(patch)}
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # a space whose cost cannot be counted: the summary says null
        summary["processes"] = self.group.world
        summary.update(self.finish_extra(arch))
        if self.group.is_main:
            from .report import write_report

            atomic_write(
                os.path.join(self.out_dir, "arch.json"), lambda f: f.write(arch.to_json(indent=2) + "\n"), mode="w"
            )
            write_json(summary, os.path.join(self.out_dir, "summary.json"))
            write_report(self.out_dir, self.log.csv_path, self.log.read_history(), arch)
        return summary
