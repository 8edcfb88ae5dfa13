#!/usr/bin/env bash
# Configure, build and smoke-test the CMake (libtorch) build of nas3d_ops, CPU kernels only.
# Usage: .ci/cmake_check.sh [python]      (default: the repo's .venv/bin/python; run from anywhere)
# Extra cmake configure arguments can be passed in CMAKE_ARGS, e.g. CMAKE_ARGS="-G Ninja".
set -euo pipefail

PY="${1:-}"
# A relative interpreter path given by the caller is relative to the caller's directory.
if [[ "$PY" == */* && "$PY" != /* ]]; then
  PY="$PWD/$PY"
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-.venv/bin/python}"
BUILD_DIR=build/cmake

TORCH_PREFIX="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')"

# shellcheck disable=SC2086  # CMAKE_ARGS is deliberately word-split
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j 2

# Load the library on its own: importing nas3d_fast as well would register the nas3d ops twice (its _C).
"$PY" - "$BUILD_DIR/libnas3d_ops.so" <<'PYEOF'
import sys

import torch

torch.ops.load_library(sys.argv[1])
logits = torch.randn(4, 6)
noise = torch.rand(4, 6).clamp_min(1e-6)
weights, indices = torch.ops.nas3d.gumbel_topk(logits, noise, 0.7, 2, False)
assert weights.shape == (4, 6), weights.shape
assert indices.shape == (4, 2), indices.shape
assert torch.allclose(weights.sum(dim=1), torch.ones(4)), weights.sum(dim=1)
assert torch.equal(weights.gather(1, indices) > 0, torch.ones(4, 2, dtype=torch.bool)), (weights, indices)
print(f"cmake_check OK: {sys.argv[1]} loaded, gumbel_topk weights {tuple(weights.shape)} rows sum to 1, "
      f"indices {tuple(indices.shape)}")
PYEOF
