"""DiNTS's memory term calibrated from the package's predicted training memory (beyond MONAI).

MONAI's DiNTS search (``get_ram_cost_usage``) estimates a network's memory as a weighted count of
output voxels with fixed per-op factors; that formula is off from what a training step really peaks at
by tens of percent. Here the same differentiable form is fitted instead to
``profile.predict_training_memory`` of real networks of the space:

    peak(arch) ~ b0 + sum over the arch's (layer, edge e, op o):
                 size(e) * (b_op[o] + b_resample[kind of e]) + b_params * params(e, o)

``size(e)``: batch x channels x voxels of the scale edge e writes (as MONAI's formula); ``params(e, o)``:
the weights of edge e's resampling and op o (exact, from the supernet). The coefficients (>= 0, bytes)
are a non-negative least-squares fit (``scipy.optimize.nnls``) to the predicted peaks of ``samples``
random architectures (``space.sample``), for the search's own batch, patch, loss and device. During the
search the expected network's peak is the same sum weighted by MONAI's path probabilities and the ops'
softmax, so the memory term stays differentiable in both logits, and it is in bytes: a budget can be
absolute (``memory_budget_mib``) instead of a fraction of the supernet.

Predictions run on meta tensors (no memory, no GPU); mixed precision is not predicted (the fit is for
float32 training).
"""

from __future__ import annotations

import numpy as np
import torch

RESAMPLE_KINDS = (-1, 0, 1)  # MONAI: down, same scale, up


def edge_op_params(supernet) -> np.ndarray:
    """(E, O) parameter counts of edge e's resampling plus op o (and its norm), from layer 0 of a
    ``DintsSupernet`` (every layer holds the same cells)."""
    lay = supernet.layout
    out = np.zeros((lay.num_edges, len(lay.ops)), dtype=np.float64)
    for e in range(lay.num_edges):
        resample, edge = supernet.cells[f"0_{e}"]
        base = sum(p.numel() for p in resample.parameters())
        for o in range(len(lay.ops)):
            n = base + sum(p.numel() for p in edge.ops[o].parameters())
            norm = getattr(edge, "norm", None)
            norms = getattr(edge, "norms", None)
            if norms is not None and str(o) in norms:
                norm = norms[str(o)]
            if norm is not None:
                n += sum(p.numel() for p in norm.parameters())
            out[e, o] = n
    return out


class PredictedMemory:
    """The fitted model (module docstring). ``sizes`` (E,) voxels x channels written by each edge,
    ``params`` (E, O), ``resample`` (E,) in ``RESAMPLE_KINDS``; ``coef`` = [b0, b_op (O), b_resample (3),
    b_params] in bytes once fitted."""

    def __init__(self, sizes: np.ndarray, params: np.ndarray, resample, coef=None, fit: dict | None = None):
        self.sizes = np.asarray(sizes, dtype=np.float64)
        self.params = np.asarray(params, dtype=np.float64)
        self.resample = [RESAMPLE_KINDS.index(int(r)) for r in resample]
        self.num_ops = self.params.shape[1]
        self._set_coef(coef)
        self.fit_stats = dict(fit or {})

    def _set_coef(self, coef) -> None:
        self.coef = None if coef is None else np.asarray(coef, dtype=np.float64)
        # (E, O) modelled bytes per active (edge, op): what every architecture step's expectation weights
        self._cost = None if coef is None else self._edge_features() @ self.coef

    # -- the features --------------------------------------------------------------------------------

    def _edge_features(self) -> np.ndarray:
        """(E, O, F): the features one active (edge, op) adds; F = 1 + O + 3 + 1 (intercept column 0)."""
        E, O = self.params.shape
        feats = np.zeros((E, O, 1 + O + len(RESAMPLE_KINDS) + 1))
        for e in range(E):
            for o in range(O):
                feats[e, o, 1 + o] = self.sizes[e]
                feats[e, o, 1 + O + self.resample[e]] = self.sizes[e]
                feats[e, o, -1] = self.params[e, o]
        return feats

    def features(self, edges) -> np.ndarray:
        """The feature vector of a dints architecture's ``edges`` (L rows of E ints, 0 = off, k = op k - 1)."""
        feats = self._edge_features()
        x = np.zeros(feats.shape[-1])
        x[0] = 1.0
        for row in edges:
            for e, v in enumerate(row):
                if v:
                    x += feats[e, v - 1]
        return x

    def fit(self, edges_list, peaks) -> None:
        """Non-negative least squares of ``peaks`` (bytes) on the architectures' features; records the
        leave-one-out relative error (how well it predicts an architecture it was not fitted on)."""
        from scipy.optimize import nnls

        X = np.stack([self.features(e) for e in edges_list])
        y = np.asarray(peaks, dtype=np.float64)
        scale = np.maximum(np.abs(X).max(0), 1e-30)  # columns of comparable size for the solver
        coef, _ = nnls(X / scale, y)
        self._set_coef(coef / scale)
        errors = []
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            c, _ = nnls(X[keep] / scale, y[keep])
            errors.append(abs(float(X[i] / scale @ c) - y[i]) / y[i])
        fitted = X @ self.coef
        self.fit_stats = {
            "samples": int(len(y)),
            "fit_max_rel_error": float(np.max(np.abs(fitted - y) / y)),
            "loo_mean_rel_error": float(np.mean(errors)),
            "loo_max_rel_error": float(np.max(errors)),
            "peak_mib_range": [float(y.min() / 2**20), float(y.max() / 2**20)],
        }

    def predict(self, edges) -> float:
        """Modelled peak (bytes) of one architecture."""
        return float(self.features(edges) @ self.coef)

    def expected(self, path_probs: torch.Tensor, op_weights: torch.Tensor, full: bool = False) -> torch.Tensor:
        """Modelled peak (bytes) of the expected network: ``path_probs`` (L, E) edge probabilities (MONAI's
        ``get_prob_a``; ones with ``full``), ``op_weights`` (L, E, O) (the ops' softmax). Differentiable."""
        feats = torch.as_tensor(self._cost, dtype=op_weights.dtype, device=op_weights.device)
        p = torch.ones_like(path_probs) if full else path_probs
        return float(self.coef[0]) + (p * (op_weights * feats).sum(-1)).sum()

    def state_dict(self) -> dict:
        return {
            "sizes": self.sizes.tolist(),
            "params": self.params.tolist(),
            "resample": [RESAMPLE_KINDS[r] for r in self.resample],
            "coef": None if self.coef is None else self.coef.tolist(),
            "fit": self.fit_stats,
        }

    @classmethod
    def from_state(cls, state: dict) -> PredictedMemory:
        return cls(state["sizes"], state["params"], state["resample"], state["coef"], state["fit"])


def calibrate(space, supernet, input_shape, *, num_classes: int, loss: str, target: str, samples: int = 24,
              seed: int = 0, progress: bool = False) -> PredictedMemory:
    """Fit :class:`PredictedMemory` for ``space`` (a dints space) and its ``supernet`` on training steps of
    ``input_shape`` (N, C, X, Y, Z): ``samples`` architectures drawn by ``space.sample`` (seeded), each
    predicted with ``profile.candidate_memory`` for ``target`` ("cuda" or "cpu")."""
    from ..profile.sample import candidate_memory

    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 8:
        raise ValueError(f"memory_samples must be an int >= 8 (the fit has up to {len(space.layout.ops) + 5} "
                         f"coefficients), got {samples!r}")
    batch, channels, *patch = (int(v) for v in input_shape)
    lay = space.layout
    voxels = [float(np.prod([n // 2 ** (d + int(lay.use_downsample)) for n in patch])) for d in range(lay.num_depths)]
    sizes = np.array([batch * lay.scale_channels(w) * voxels[w] for w in space.writes])
    model = PredictedMemory(sizes, edge_op_params(supernet), space.resample)
    rng = np.random.default_rng(seed)
    archs = [space.sample(rng) for _ in range(samples)]
    peaks = []
    items = archs
    if progress:
        from tqdm import tqdm

        items = tqdm(archs, desc="memory model (predicting candidates)", unit="arch")
    for arch in items:
        report = candidate_memory(space, arch, (channels, *patch), batch, num_classes=num_classes, loss=loss,
                                  target=target)
        peaks.append(report.peak_bytes)
    model.fit([a.edges for a in archs], peaks)
    return model
