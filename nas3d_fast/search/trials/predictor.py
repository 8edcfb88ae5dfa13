"""T-AutoML's binary relation predictor (papers/t-automl.md §3.3, §4.1, §4.3) as an ask/tell trial searcher.

A transformer reads the 1D encoding of a candidate (§3.2: architecture, augmentation and hyper-parameters
in one vector), an MLP reads a pair of such readings and predicts whether the first candidate scores
higher than the second (Eq. 1, Fig. 3); candidates are ranked by how many others they are predicted to
beat (§3.3) and the best unseen ones are trained next.

Dynamic length (§3.2-3.3)
-------------------------
The space interface has fixed-length encodings; T-AutoML's (``nas3d_fast.spaces.tautoml``) keeps 12
block slots and writes the slots at and beyond its N blocks as 0, which ``decode`` ignores. Such positions
are found through the interface alone: position p of an encoding v is *unused* when it has one choice, or
when ``decode`` gives the same architecture with v[p] replaced by another allowed value. Unused positions
are masked out of the transformer's attention (``src_key_padding_mask``) and of the pooling, so the
transformer sees each architecture's own blocks only, the paper's "vector with dynamic length". Which
positions can ever be unused is probed once on ``probe`` samples of the space (a separate generator
seeded from ``seed``); only those are tested per encoding (cached), so fixed-length spaces (dints, c2fnas,
scnas, ronasmis) cost nothing per candidate and are read whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ...spaces.base import Arch, SearchSpace
from .searcher import TrialSearcher

Code = tuple[int, ...]


def _int_option(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _float_option(name: str, value, low: float, high: float, high_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        value = float(value)
        ok = math.isfinite(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        raise ValueError(f"{name} must be a number in [{low}, {high}{')' if high_open else ']'}, got {value!r}")
    return value


class RelationPredictor(nn.Module):
    """P(A better than B) from two encodings.

    ``embed(tokens, mask)``: tokens (B, L) int64, the vocabulary index of (position, value), i.e.
    ``offsets[p] + v[p]``; mask (B, L) bool, True at unused positions. Token embedding (one per
    (position, value)) + learned position embedding -> ``TransformerEncoder`` (``layers`` x ``heads``,
    feed-forward 2 * d_model) -> mean over the used positions -> (B, d_model).
    ``forward(ha, hb)``: (P, d_model) twice -> (P,) logits of "A better than B". The head g is an MLP on
    [hA, hB, hA - hB]; the logit is (g(A, B) - g(B, A)) / 2, antisymmetric by construction, so
    P(A > B) + P(B > A) = 1 exactly and one order of each pair suffices for training.
    """

    def __init__(self, vocab: int, length: int, d_model: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.token = nn.Embedding(vocab, d_model)
        self.position = nn.Embedding(length, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(3 * d_model, d_model), nn.ReLU(), nn.Linear(d_model, 1))

    def embed(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.token(tokens) + self.position.weight[: tokens.shape[1]]
        x = self.encoder(x, src_key_padding_mask=mask).masked_fill(mask.unsqueeze(-1), 0.0)
        return x.sum(1) / (~mask).sum(1, keepdim=True).to(x.dtype)

    def forward(self, ha: torch.Tensor, hb: torch.Tensor) -> torch.Tensor:
        g_ab = self.head(torch.cat([ha, hb, ha - hb], -1)).squeeze(-1)
        g_ba = self.head(torch.cat([hb, ha, hb - ha], -1)).squeeze(-1)
        return 0.5 * (g_ab - g_ba)


class RelationPredictorSearch(TrialSearcher):
    """T-AutoML's search (§3.3, §4.1), asynchronous and scaled down by its options.

    Args:
        space, seed, sampler: as :class:`TrialSearcher` (all randomness comes from ``self.rng``).
        initial: random proposals first (the paper's uniformly sampled, trained candidates).
        min_trials: scored (rung-0) results needed before the predictor is fitted; until then, e.g. while
            every worker is busy with the first candidates, proposals stay random.
        val_fraction: share of the scored results held out to measure the predictor (§4.1: 25 of 100).
        pool: candidates ranked after each fit (§4.1: 200): the scored ones (at most ``pool // 2``, a
            random subset if more) plus unseen samples from the sampler filling the rest (so a
            ``MemoryBudgetSampler`` keeps the ranked candidates inside its budget).
        opponents: each pool member is compared with this many random other members; None: with all
            (§3.3: "we compare it with all other sampled configurations").
        explore: probability that a proposal after the start is a random candidate instead of the next
            ranked one (keeps some exploration while the predictor is poor; 0 for the paper's pure ranking).
        d_model, layers, heads, dropout: the transformer (:class:`RelationPredictor`).
        epochs: full-batch Adam steps over all training pairs per fit. lr, weight_decay: Adam's.
        probe: samples used once to find the positions that can be unused (module docstring).

    Protocol as implemented (our reading of §3.3 and §4.1):

    1. Start: the first ``initial`` proposals (counted by ``len(self.seen)``) are ``self.sample()``.
    2. Fit, in :meth:`propose`, whenever ``min_trials`` scored results exist and some arrived since the
       last fit (asynchronous use: suggestions made before their results are observed reuse the last
       fit). A fit seed is drawn from ``self.rng``; it seeds the split of the scored results into train
       and validation (``val_fraction``) and, through ``torch.random.fork_rng``, the model's
       initialisation and dropout (torch's global RNG is restored afterwards). The model is trained with
       BCE on every pair of training results with different scores, label 1 when the first scored higher
       (Eq. 1); ``last_pairwise_accuracy`` is the share of validation pairs (different scores) whose order
       it predicts, the predictor's quality as :meth:`report` shows it (None below one pair). The model
       trained on the training part is the one that ranks (as in the paper).
    3. Rank (:meth:`win_counts`): the pool's members are compared pairwise; each one's win count is the
       number of opponents it is predicted to beat (P > 0.5), ties broken by the summed probabilities.
       The unseen members, best first, form the queue of proposals.
    4. Each proposal: with probability ``explore`` a random sample, otherwise the queue's head. An empty
       queue (more suggestions than unseen pool members before new results) is refilled by ranking a
       fresh pool with the same model.

    :meth:`observe` is the base class's: a fit waits for the next proposal, so a burst of results costs one.

    State: no weights. ``state_dict`` holds the fit's seed and how many results it used; after
    ``load_state_dict`` the model is refitted from exactly those, and only when it is needed (an
    exhausted queue before new results), so a restored searcher continues bit-identically (on the CPU,
    with the same torch build and thread count). A fit of ~50 results takes about 2 s on one CPU thread
    (defaults); ranking a pool of 200 T-AutoML candidates under 1 s.
    """

    name = "predictor"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        sampler: Callable[[np.random.Generator], Arch] | None = None,
        *,
        initial: int = 8,
        min_trials: int = 8,
        val_fraction: float = 0.2,
        pool: int = 200,
        opponents: int | None = None,
        explore: float = 0.1,
        d_model: int = 32,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
        epochs: int = 40,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        probe: int = 64,
    ):
        super().__init__(space, seed=seed, sampler=sampler)
        self.initial = _int_option("initial", initial, 0)
        self.min_trials = _int_option("min_trials", min_trials, 2)
        self.val_fraction = _float_option("val_fraction", val_fraction, 0.0, 1.0, high_open=True)
        self.pool = _int_option("pool", pool, 2)
        self.opponents = None if opponents is None else _int_option("opponents", opponents, 1)
        self.explore = _float_option("explore", explore, 0.0, 1.0)
        self.d_model = _int_option("d_model", d_model, 1)
        self.layers = _int_option("layers", layers, 1)
        self.heads = _int_option("heads", heads, 1)
        if self.d_model % self.heads:
            raise ValueError(f"heads ({heads}) must divide d_model ({d_model})")
        self.dropout = _float_option("dropout", dropout, 0.0, 1.0, high_open=True)
        self.epochs = _int_option("epochs", epochs, 1)
        self.lr = _float_option("lr", lr, 0.0, math.inf, high_open=True)
        if self.lr <= 0:
            raise ValueError(f"lr must be a number > 0, got {lr!r}")
        self.weight_decay = _float_option("weight_decay", weight_decay, 0.0, math.inf, high_open=True)
        self.probe = _int_option("probe", probe, 0)
        self.choices = [int(c) for c in space.vector_choices()]
        self.offsets = np.concatenate([[0], np.cumsum(self.choices)[:-1]]).astype(np.int64)
        self._maskable: list[int] | None = None  #: positions that can be unused (found lazily)
        self._masks: dict[Code, np.ndarray] = {}  #: encoding -> (L,) bool, True where unused
        self.model: RelationPredictor | None = None
        self.queue: list[Code] = []  #: ranked unseen pool members not proposed yet
        self.fit_seed: int | None = None
        self.fit_results = 0  #: len(self.results) at the last fit
        self.last_pairwise_accuracy: float | None = None
        self.history: list[dict] = []  #: one {"scored", "train", "val", "pairwise_accuracy"} per fit

    def options(self) -> dict:
        keys = ("initial", "min_trials", "val_fraction", "pool", "opponents", "explore", "d_model", "layers",
                "heads", "dropout", "epochs", "lr", "weight_decay", "probe")
        return {k: getattr(self, k) for k in keys}

    # -- tokens and masks ----------------------------------------------------------------------------

    def unused_mask(self, code: Sequence[int]) -> np.ndarray:
        """(L,) bool: True at the positions of ``code`` its architecture does not depend on (module docstring)."""
        code = tuple(int(v) for v in code)
        if code not in self._masks:
            if self._maskable is None:
                probe_rng = np.random.default_rng([self.seed, 1])
                samples = [self.space.encode(self.space.sample(probe_rng)) for _ in range(self.probe)]
                found = set()
                for s in samples:
                    found.update(np.flatnonzero(self._probe(s, range(len(self.choices)))).tolist())
                self._maskable = sorted(found)
            self._masks[code] = self._probe(code, self._maskable)
        return self._masks[code]

    def _probe(self, code: Sequence[int], positions: Sequence[int]) -> np.ndarray:
        """(L,) bool: one-choice positions, and those of ``positions`` that ``decode`` ignores in ``code``."""
        mask = np.array([c == 1 for c in self.choices])
        positions = [p for p in positions if self.choices[p] > 1]
        arch = self.space.decode(code) if positions else None
        for p in positions:
            other = list(code)
            other[p] = (code[p] + 1) % self.choices[p]
            try:
                mask[p] = self.space.decode(other) == arch
            except ValueError:  # ArchError: the position matters
                pass
        if mask.all():  # nothing would be left to read
            mask[:] = False
        return mask

    def tokens(self, codes: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L) int64 vocabulary indices and (N, L) bool unused-position masks of N encodings."""
        values = np.asarray(codes, dtype=np.int64).reshape(len(codes), len(self.choices))
        masks = np.stack([self.unused_mask(c) for c in codes]) if len(codes) else np.zeros_like(values, bool)
        return torch.from_numpy(values + self.offsets), torch.from_numpy(masks)

    # -- the predictor -------------------------------------------------------------------------------

    def _scored_upto(self, n_results: int) -> list[tuple[Code, float]]:
        return [(tuple(r["encoding"]), r["score"]) for r in self.results[:n_results]
                if r["rung"] == 0 and r["score"] is not None]

    @staticmethod
    def _pairs(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unordered pairs (i < j) with different scores and their labels (1.0 when i scored higher)."""
        i, j = np.triu_indices(len(scores), 1)
        keep = scores[i] != scores[j]
        i, j = i[keep], j[keep]
        return i, j, (scores[i] > scores[j]).astype(np.float32)

    def fit(self, n_results: int, seed: int) -> dict:
        """Train the predictor on the scored rung-0 trials among ``self.results[:n_results]`` (seeded by
        ``seed``: split, initialisation, dropout) and measure its validation pairwise accuracy; returns
        {"scored", "train", "val", "pairwise_accuracy"}."""
        scored = self._scored_upto(n_results)
        codes = [c for c, _ in scored]
        scores = np.array([s for _, s in scored], dtype=np.float64)
        order = np.random.default_rng(seed).permutation(len(scored))
        n_val = max(0, min(round(self.val_fraction * len(scored)), len(scored) - 2))
        val, train = order[:n_val], order[n_val:]
        tokens, masks = self.tokens(codes)
        ti, tj, ty = self._pairs(scores[train])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = RelationPredictor(int(sum(self.choices)), len(self.choices), self.d_model, self.layers,
                                      self.heads, self.dropout)
            if len(ty):
                opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
                x, m = tokens[train], masks[train]
                ti, tj, ty = torch.from_numpy(ti), torch.from_numpy(tj), torch.from_numpy(ty)
                model.train()
                for _ in range(self.epochs):
                    h = model.embed(x, m)
                    loss = nn.functional.binary_cross_entropy_with_logits(model(h[ti], h[tj]), ty)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        model.eval()
        self.model = model
        vi, vj, vy = self._pairs(scores[val])
        accuracy = None
        if len(vy):
            with torch.no_grad():
                h = model.embed(tokens[val], masks[val])
                predicted = (model(h[torch.from_numpy(vi)], h[torch.from_numpy(vj)]) > 0).numpy()
            accuracy = float((predicted == (vy > 0.5)).mean())
        self.last_pairwise_accuracy = accuracy
        self.fit_seed, self.fit_results = int(seed), int(n_results)
        return {"scored": len(scored), "train": len(train), "val": len(val), "pairwise_accuracy": accuracy}

    def _model(self) -> RelationPredictor:
        if self.model is None:  # after load_state_dict: refit exactly as before
            self.fit(self.fit_results, self.fit_seed)
        return self.model

    def win_counts(self, codes: Sequence[Sequence[int]], opponents: np.ndarray | None = None) -> np.ndarray:
        """(N, 2) float64: for each of N encodings, the number of others it is predicted to beat and the sum
        of its P(better) over them. ``opponents``: (N, K) indices into ``codes`` (default: all others).
        Needs a fit (RuntimeError before)."""
        if self.model is None and self.fit_seed is None:
            raise RuntimeError("predictor: not fitted yet (it is fitted once min_trials results are scored)")
        model = self._model()
        n = len(codes)
        with torch.no_grad():
            h = model.embed(*self.tokens(codes))
            if opponents is None:
                a, b = np.nonzero(~np.eye(n, dtype=bool))
            else:
                a, b = np.repeat(np.arange(n), opponents.shape[1]), np.asarray(opponents).reshape(-1)
            p = torch.sigmoid(model(h[torch.from_numpy(a)], h[torch.from_numpy(b)])).double().numpy()
        wins = np.zeros((n, 2))
        np.add.at(wins[:, 0], a, p > 0.5)
        np.add.at(wins[:, 1], a, p)
        return wins

    def rank(self) -> list[Code]:
        """Draw a pool (the scored trials, at most ``pool // 2``, plus unseen samples) and return its unseen
        members, best first by win count."""
        scored = list(dict.fromkeys(c for c, _ in self._scored_upto(len(self.results))))
        if len(scored) > self.pool // 2:
            scored = [scored[i] for i in sorted(self.rng.choice(len(scored), self.pool // 2, replace=False))]
        members, have = list(scored), set(scored)
        for _ in range(4 * self.pool):
            if len(members) >= self.pool:
                break
            code = tuple(int(v) for v in self.space.encode(self.sample()))
            if code not in self.seen and code not in have:
                have.add(code)
                members.append(code)
        n = len(members)
        if n == len(scored):
            return []
        opponents = None
        if self.opponents is not None and self.opponents < n - 1:
            opponents = self.rng.integers(0, n - 1, size=(n, self.opponents))
            opponents += opponents >= np.arange(n)[:, None]  # never oneself
        wins = self.win_counts(members, opponents)
        order = np.lexsort((np.arange(n), -wins[:, 1], -wins[:, 0]))
        return [members[i] for i in order if members[i] not in self.seen]

    # -- proposals -----------------------------------------------------------------------------------

    def propose(self) -> Arch:
        n_scored = len(self._scored_upto(len(self.results)))
        if len(self.seen) < self.initial or n_scored < self.min_trials:
            return self.sample()
        if len(self._scored_upto(self.fit_results)) < n_scored:
            info = self.fit(len(self.results), int(self.rng.integers(2**63 - 1)))
            self.history.append(info)
            self.queue = self.rank()
        if self.rng.random() < self.explore:
            return self.sample()
        self.queue = [c for c in self.queue if c not in self.seen]
        if not self.queue:
            self.queue = self.rank()
        if not self.queue:
            return self.sample()  # the space is (nearly) exhausted
        return self.space.decode(self.queue.pop(0))

    def report(self) -> dict:
        """The predictor's quality: its last validation pairwise accuracy and the fits so far."""
        last = self.history[-1] if self.history else {}
        return {"fits": len(self.history), "pairwise_accuracy": self.last_pairwise_accuracy,
                "train": last.get("train"), "val": last.get("val"), "history": [dict(h) for h in self.history],
                "queued": len(self.queue)}

    # -- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(queue=[list(c) for c in self.queue], fit_seed=self.fit_seed, fit_results=self.fit_results,
                     last_pairwise_accuracy=self.last_pairwise_accuracy, history=[dict(h) for h in self.history])
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.queue = [tuple(int(v) for v in c) for c in state["queue"]]
        self.fit_seed = None if state["fit_seed"] is None else int(state["fit_seed"])
        self.fit_results = int(state["fit_results"])
        self.last_pairwise_accuracy = state["last_pairwise_accuracy"]
        self.history = [dict(h) for h in state["history"]]
        self.model = None
