"""The one interface every search space implements (SPEC §5), and what the spaces share.

A space is a class registered under a name (``nas3d_fast.spaces.get("dints", **options)``); its
options (channel multipliers, numbers of layers...) are constructor arguments. An architecture is an
:class:`Arch`, a frozen dataclass of the space's fields, serialised as::

    {"format": "nas3d-arch-1", "space": "dints", "arch": {...the dataclass fields...}}

Every architecture also has a 1D integer encoding (T-AutoML §3.2): ``encode(arch)`` gives it,
``decode(vector)`` reads it back, and ``vector_choices()`` gives the number of choices at each position
(searchers that work on vectors need nothing else). Bad architectures and vectors raise
:class:`ArchError` naming the position (``ArchError("position 7: level 6 outside 2..5")``).

A space with a supernet also has ``arch_shapes()`` (its supernet's groups, without building it) and
``derive(logits)``: the architecture a supernet search ends with, from the supernet's architecture
logits, one (E, K) tensor per group as ``Supernet.arch_logits()`` holds them. Every supernet searcher
makes that one call, whatever the space. A space without a supernet (tautoml) raises
:class:`NoSupernetError` from ``supernet``, ``arch_shapes`` and ``derive``, pointing to the trial searchers.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

ARCH_FORMAT = "nas3d-arch-1"

# name -> module defining the space; modules are imported when the space is first asked for.
_SPACE_MODULES = {
    "dints": "nas3d_fast.spaces.dints",
    "scnas": "nas3d_fast.spaces.scnas",
    "c2fnas": "nas3d_fast.spaces.c2fnas",
    "tautoml": "nas3d_fast.spaces.tautoml",
    "ronasmis": "nas3d_fast.spaces.ronasmis",
}
_REGISTRY: dict[str, type[SearchSpace]] = {}


class ArchError(ValueError):
    """An architecture or encoding that the space cannot hold; the message names the position."""


class NoSupernetError(ValueError, NotImplementedError):
    """A supernet, or what only a supernet search needs (``arch_shapes``, ``derive``), asked of a space that
    shares no weights. A ValueError (the request does not fit the space) and, for callers written
    before it, a NotImplementedError."""


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A numpy Generator from a Generator, a seed, or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def check_vector(vector: Sequence[int], choices: Sequence[int], space: str) -> list[int]:
    """``vector`` as a list of ints, after checking its length and each entry against ``choices``."""
    try:
        values = [int(v) for v in vector]
    except (TypeError, ValueError) as exc:
        raise ArchError(f"{space}: the encoding must be a sequence of integers ({exc})") from exc
    if any(int(v) != v for v in vector):
        raise ArchError(f"{space}: the encoding must hold integers, got {list(vector)}")
    if len(values) != len(choices):
        raise ArchError(f"{space}: the encoding has length {len(values)}, expected {len(choices)}")
    for i, (v, n) in enumerate(zip(values, choices)):
        if not 0 <= v < n:
            raise ArchError(f"{space}: position {i}: value {v} outside 0..{n - 1}")
    return values


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tupled(value: Any) -> Any:
    """JSON lists back to (nested) tuples, so that decoded architectures are hashable and compare equal."""
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    if isinstance(value, dict):
        return {k: _tupled(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Arch:
    """Base of every space's architecture type: a frozen dataclass whose fields are JSON-able values
    (ints, floats, strings, nested tuples). Subclasses set ``space`` and add their fields; override
    ``from_dict`` when a field needs more than lists-to-tuples."""

    space: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps({"format": ARCH_FORMAT, "space": self.space, "arch": self.to_dict()}, indent=indent)

    @classmethod
    def from_dict(cls, fields: dict) -> Arch:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = set(fields) - names, names - set(fields)
        if unknown or missing:
            raise ArchError(
                f"{cls.space}: architecture fields {sorted(fields)} do not match {sorted(names)}"
                + (f" (unknown: {sorted(unknown)})" if unknown else "")
                + (f" (missing: {sorted(missing)})" if missing else "")
            )
        return cls(**{k: _tupled(v) for k, v in fields.items()})

    @classmethod
    def from_json(cls, text: str | dict) -> Arch:
        """Read ``to_json``'s output (a string or the parsed dict). On ``Arch`` itself the space named in
        the JSON picks the type; on a subclass the JSON must name that subclass's space."""
        try:
            raw = json.loads(text) if isinstance(text, str) else text
        except json.JSONDecodeError as exc:
            raise ArchError(f"architecture JSON is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != ARCH_FORMAT or "arch" not in raw:
            raise ArchError(f"architecture JSON must be an object with format {ARCH_FORMAT!r}, 'space' and 'arch'")
        space = raw.get("space")
        target = cls if cls.space else space_class(space).arch_type
        if target.space != space:
            raise ArchError(f"architecture JSON is for space {space!r}, expected {target.space!r}")
        if not isinstance(raw["arch"], dict):
            raise ArchError("architecture JSON: 'arch' must be an object")
        return target.from_dict(raw["arch"])


@dataclasses.dataclass(frozen=True)
class Cost:
    """Size of a discrete network: ``params`` (trainable parameters) and ``flops`` of one forward pass
    at batch 1, as ``torch.utils.flop_counter`` counts them (2 per multiply-add; convolutions, matmuls
    and attention; ops without a registered formula count 0)."""

    params: int
    flops: int


class Supernet(nn.Module, ABC):
    """The weight-sharing network of a space; its searchable edges are ``MixedEdge3d``.

    Edges are grouped (e.g. "normal" and "reduce" cells, or one group per layer); ``arch_shapes()`` gives
    each group's (edges E, candidates K). ``forward(x, weights)``: ``weights`` maps each group name to
    either dense (E, K) weights (the softmax of architecture logits) or the ``(weights (E, K), indices
    (E, k))`` pair that ``ops.gumbel_topk`` returns for the group's logits (weights zero off the k
    chosen candidates of each row; only those are computed).
    """

    @abstractmethod
    def arch_shapes(self) -> dict[str, tuple[int, int]]: ...

    @abstractmethod
    def one_hot(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Dense weights that select exactly ``arch`` (1 on its candidate of each edge, 0 elsewhere)."""

    def child_weights(self, arch: Arch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The sampled-path weights that run exactly ``arch``'s candidate on every edge and nothing else:
        ``{group: (one_hot (E, K), indices (E, 1))}``, the form ``forward`` takes from ``ops.gumbel_topk``
        with k = 1. Its output equals ``self(x, self.one_hot(arch))`` at the cost of one path (single-path
        one-shot and ENAS children train and run through it)."""
        return {g: (w, w.argmax(1, keepdim=True)) for g, w in self.one_hot(arch).items()}

    @abstractmethod
    def extract(self, arch: Arch) -> nn.Module:
        """The discrete network of ``arch`` (as ``space.build`` makes it) holding this supernet's weights:
        its output equals ``self(x, self.one_hot(arch))``."""

    def arch_logits(self, init_std: float = 1e-3) -> nn.ParameterDict:
        """Fresh architecture logits, one (E, K) parameter per group, near zero (uniform softmax)."""
        return nn.ParameterDict(
            {name: nn.Parameter(init_std * torch.randn(e, k)) for name, (e, k) in self.arch_shapes().items()}
        )


class SearchSpace(ABC):
    """One search space. Subclasses set ``name`` and ``arch_type``, take their options as keyword
    constructor arguments (recorded in ``self.options``), and implement the abstract methods."""

    name: ClassVar[str]
    arch_type: ClassVar[type[Arch]]
    #: spatial sizes of input patches must be multiples of this (the network's total downsampling).
    stride: int = 1
    #: spaces without a supernet: why (the end of :class:`NoSupernetError`'s message); None for the others.
    no_supernet_reason: ClassVar[str | None] = None

    def __init__(self, **options: Any):
        self.options = dict(options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"

    # -- architectures and their encodings --------------------------------------------------------

    @abstractmethod
    def sample(self, rng: np.random.Generator | int | None = None) -> Arch:
        """A random architecture of the space (uniform over each choice unless the docstring says otherwise)."""

    @abstractmethod
    def vector_choices(self) -> list[int]:
        """The number of choices at each position of the encoding (its length is the vector's length)."""

    @abstractmethod
    def encode(self, arch: Arch) -> list[int]:
        """The 1D integer vector of ``arch``; raises ArchError if ``arch`` is not in the space."""

    @abstractmethod
    def decode(self, vector: Sequence[int]) -> Arch:
        """The architecture of an encoding; raises ArchError naming the first bad position."""

    def topology_positions(self) -> list[int]:
        """Positions of the encoding that describe the network's topology rather than its operations (the
        codes C2FNAS's evolution clusters, ``nas3d_fast.search.trials.evolution``); by default every
        position."""
        return list(range(len(self.vector_choices())))

    def check(self, arch: Arch) -> None:
        """Raise ArchError if ``arch`` is not an architecture of this space."""
        if not isinstance(arch, self.arch_type):
            raise ArchError(f"{self.name}: expected a {self.arch_type.__name__}, got {type(arch).__name__}")
        self.decode(self.encode(arch))

    def arch_from_json(self, text: str | dict) -> Arch:
        arch = self.arch_type.from_json(text)
        self.check(arch)
        return arch

    def enumerate(self) -> Iterator[Arch]:
        """Every architecture, for finite spaces small enough to list; others raise NotImplementedError."""
        raise NotImplementedError(f"space {self.name!r} is too large to enumerate")

    # -- networks ----------------------------------------------------------------------------------

    @abstractmethod
    def build(self, arch: Arch, in_channels: int, num_classes: int) -> nn.Module:
        """The discrete network: (N, in_channels, X, Y, Z) -> (N, num_classes, X, Y, Z) logits, for X, Y, Z
        multiples of ``self.stride``."""

    @abstractmethod
    def supernet(self, in_channels: int, num_classes: int, **options: Any) -> Supernet:
        """The weight-sharing network over the whole space (see :class:`Supernet`); spaces without one
        raise ``self.no_supernet_error()``."""

    # -- supernet searches -------------------------------------------------------------------------

    def no_supernet_error(self) -> NoSupernetError:
        """The error of every supernet request on a space without a supernet."""
        message = (
            f"space {self.name!r} has no supernet: search it with a trial searcher (random, evolution, relation)"
        )
        if self.no_supernet_reason:
            message += f". {self.no_supernet_reason}"
        return NoSupernetError(message)

    def arch_shapes(self) -> dict[str, tuple[int, int]]:
        """{group: (E, K)} of the supernet's architecture logits, as ``supernet(...).arch_shapes()`` gives
        them, without building the supernet. Spaces with a supernet override it."""
        raise self.no_supernet_error()

    def derive(self, logits: Mapping[str, torch.Tensor]) -> Arch:
        """The architecture a supernet search ends with: from the architecture logits of the space's
        supernet, ``{group: (E, K) tensor}`` exactly as ``Supernet.arch_shapes()``/``arch_logits()`` give
        them (on any device, any real dtype, with or without requires_grad; never modified). The result
        always passes ``check``, and logits that strongly favour an architecture
        (``{g: 10 * w for g, w in supernet.one_hot(arch).items()}``) give that architecture back. Each
        space's docstring gives its rule; ties go to the lower index. Bad logits raise ValueError naming
        the group and the expected shape (see ``check_logits``). Spaces without a supernet raise
        :class:`NoSupernetError`."""
        raise self.no_supernet_error()

    def check_logits(
        self, logits: Mapping[str, Any], shapes: Mapping[str, tuple[int, int]] | None = None
    ) -> dict[str, torch.Tensor]:
        """``logits`` checked against ``shapes`` (default ``arch_shapes()``): exactly those groups, each
        a real tensor (or array) of its (E, K) shape with finite values (a dict, any mapping, or the
        ``nn.ParameterDict`` of ``Supernet.arch_logits()``). Returns detached float64 CPU
        copies; ValueError names the group and the shape it must have."""
        shapes = dict(self.arch_shapes() if shapes is None else shapes)
        where = f"{self.name}: derive"
        groups = ", ".join(f"{g!r} {tuple(s)}" for g, s in shapes.items())
        if not isinstance(logits, Mapping) and not isinstance(logits, nn.ParameterDict):
            raise ValueError(
                f"{where} takes a dict of the supernet's architecture logits, {{group: (E, K) tensor}} ({groups}), "
                f"got {type(logits).__name__}"
            )
        extra = [g for g in logits.keys() if g not in shapes]
        if extra:
            raise ValueError(f"{where}: unknown groups {sorted(map(str, extra))}; the supernet's groups are {groups}")
        out = {}
        for group, shape in shapes.items():
            shape = tuple(int(n) for n in shape)
            need = f"{where}: weights[{group!r}] must be a {shape} tensor (group {group!r} of the architecture logits)"
            if group not in logits.keys():
                raise ValueError(f"{need}, missing; the groups are {groups}")
            value = logits[group]
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(np.array(value))
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{need}, got {type(value).__name__}")
            if tuple(value.shape) != shape:
                raise ValueError(f"{need}, got shape {tuple(value.shape)}")
            if value.is_complex():
                raise ValueError(f"{need} of real values, got dtype {value.dtype}")
            if value.device.type == "meta":
                raise ValueError(f"{need} holding values, got a meta tensor")
            value = value.detach().to("cpu", torch.float64, copy=True)
            bad = ~torch.isfinite(value)
            if bad.any():
                rows = sorted({int(r) for r in bad.nonzero()[:, 0]})
                more = "..." if len(rows) > 10 else ""
                raise ValueError(f"{need} of finite values; rows {rows[:10]}{more} hold NaN or inf")
            out[group] = value
        return out

    def cost(self, arch: Arch, input_shape: Sequence[int], num_classes: int = 2) -> Cost:
        """Parameters and forward FLOPs of ``build(arch, C, num_classes)`` for an input patch of shape
        (C, X, Y, Z), batch 1. The network is built and run on the meta device (no memory, no compute)."""
        if len(input_shape) != 4:
            raise ValueError(f"input_shape must be (C, X, Y, Z), got {tuple(input_shape)}")
        self.check_patch(input_shape[1:])
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            model = self.build(arch, int(input_shape[0]), num_classes)
            x = torch.empty(1, *input_shape)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return Cost(params=int(params), flops=int(counter.get_total_flops()))

    def check_patch(self, spatial: Sequence[int]) -> None:
        """Raise ValueError unless every spatial size is a positive multiple of ``self.stride``."""
        if len(spatial) != 3 or any(int(s) <= 0 or int(s) % self.stride for s in spatial):
            raise ValueError(
                f"{self.name}: patch size {tuple(spatial)} must be three positive multiples of {self.stride}"
            )

    # -- memory ------------------------------------------------------------------------------------

    def sample_within(
        self,
        budget_bytes: int,
        input_shape: Sequence[int],
        batch_size: int,
        rng: np.random.Generator | int | None = None,
        **kwargs: Any,
    ) -> Arch:
        """A random architecture whose training-step peak memory is within the budget (rejection sampling;
        see ``nas3d_fast.profile.sample_within`` for the arguments)."""
        from ..profile import sample_within

        return sample_within(self, budget_bytes, input_shape, batch_size, rng, **kwargs)


def register(cls: type[SearchSpace]) -> type[SearchSpace]:
    """Class decorator: make ``cls`` findable by ``get(cls.name)``."""
    if not getattr(cls, "name", None) or not getattr(cls, "arch_type", None):
        raise TypeError(f"{cls.__name__} must set the class attributes name and arch_type")
    if cls.arch_type.space != cls.name:
        raise TypeError(f"{cls.__name__}.arch_type.space is {cls.arch_type.space!r}, expected {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """The names of every space."""
    return sorted(set(_SPACE_MODULES) | set(_REGISTRY))


def space_class(name: str) -> type[SearchSpace]:
    if name not in _REGISTRY and name in _SPACE_MODULES:
        importlib.import_module(_SPACE_MODULES[name])
    if name not in _REGISTRY:
        raise ValueError(f"unknown search space {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def get(name: str, **options: Any) -> SearchSpace:
    """The space registered as ``name``, constructed with ``options``."""
    return space_class(name)(**options)
