"""Suite ``compile``: a training step of one built network per space, ``torch.compile`` (inductor) vs eager,
on CPU. Reported, no target (issue 24 item 1): it tells users whether compiling a found network pays.

One case pair per space: forward, cross-entropy loss and backward of ``space.build(arch, 1, 2)``
(architecture ``space.sample(0)``, the small options of SPACES below) on a (1, 1, 32^3) patch.
The compiled side is warmed up (compiled) before timing. Ratio keys ``{space}.speedup_vs_eager``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nas3d_fast import spaces

from .core import Case, Ratio, Suite

#: small options per space, shared with tests/test_compile.py and tests/test_export.py
SPACES = {
    "dints": {"num_blocks": 3, "num_depths": 2, "channel_mul": 0.125},
    "scnas": {"base_channels": 2},
    "c2fnas": {"channels": 4},
    "ronasmis": {"base_channels": 4, "depth": 2, "layers_per_stage": 1},
    "tautoml": {},
}
SHAPE = (1, 1, 32, 32, 32)


def _step(name: str, compiled: bool):
    def build(device: str):
        space = spaces.get(name, **SPACES[name])
        torch.manual_seed(0)
        net = space.build(space.sample(0), SHAPE[1], 2).to(device)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(SHAPE, generator=g).to(device)
        y = torch.randint(0, 2, (SHAPE[0], *SHAPE[2:]), generator=g).to(device)
        model = torch.compile(net) if compiled else net

        def step():
            net.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()

        if compiled:
            torch._dynamo.reset()
            step()  # compiles now, not inside the timed repeats
        return step

    return build


SUITE = Suite(
    "compile",
    tuple(
        Case(f"{name}_{side}", _step(name, side == "compiled"), "nas3d" if side == "compiled" else "eager")
        for name in SPACES
        for side in ("compiled", "eager")
    ),
    tuple(Ratio(f"{name}.speedup_vs_eager", f"{name}_compiled", f"{name}_eager") for name in SPACES),
    "a built network's training step under torch.compile (inductor) vs eager, per space, CPU",
    quick_cases=("ronasmis_compiled", "ronasmis_eager"),
)
