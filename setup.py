"""Builds nas3d_fast._C with torch's cpp_extension.

CPU kernels are always compiled. CUDA kernels are compiled when nvcc and a CUDA build of torch are both
present, or when FORCE_CUDA=1 (then a missing toolkit is an error); FORCE_CPU=1 skips them.
TORCH_CUDA_ARCH_LIST chooses the GPU architectures (e.g. "7.0" for V100 with CUDA 12, "7.5;8.0;9.0").
Build in place with:  pip install --no-build-isolation -e .
NAS3D_METADATA_ONLY=1 installs the package without compiling (the Makefile then runs
`setup.py build_ext --inplace`, which ninja keeps incremental).
NAS3D_SANITIZE=address (or e.g. "address,undefined") compiles the C++ kernels for a sanitizer: -O1 -g,
frame pointers, -fsanitize=...; CPU kernels only (with FORCE_CPU=1). `make asan` builds it into
build/asan (build_ext -b/-t), away from the normal extension, and runs the op tests on it.
"""

from __future__ import annotations

import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda() -> bool:
    import torch

    if _flag("FORCE_CPU"):
        return False
    have_toolkit = cpp_extension.CUDA_HOME is not None
    have_cuda_torch = torch.version.cuda is not None
    if _flag("FORCE_CUDA"):
        missing = [
            w for w, ok in (("nvcc/CUDA_HOME", have_toolkit), ("a CUDA build of torch", have_cuda_torch)) if not ok
        ]
        if missing:
            raise RuntimeError(f"FORCE_CUDA=1 but {' and '.join(missing)} not found; set CUDA_HOME or install one")
        return True
    return have_toolkit and have_cuda_torch


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _pip_cuda_includes() -> list[str]:
    """Headers of the CUDA libraries torch itself depends on (cuSPARSE, cuBLAS, ...) ship in the nvidia
    pip packages; a minimal system toolkit may lack them, and ATen/cuda headers include them."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for root in getattr(nvidia, "__path__", []):
        found += sorted(glob.glob(os.path.join(root, "cu*", "include"))) + sorted(
            glob.glob(os.path.join(root, "*", "include"))
        )
    return [d for d in dict.fromkeys(found) if os.path.isdir(d)]


def _default_cuda_arch_list() -> None:
    """Without TORCH_CUDA_ARCH_LIST, cpp_extension compiles for the GPUs it sees, and fails when it sees
    none (a build machine or CI). Then default to the common data-centre GPUs the toolkit supports:
    CUDA 13 dropped sm_70 (V100), CUDA 12 still has it; +PTX lets newer GPUs JIT the last one."""
    import torch

    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.is_available():
        return
    major = int((torch.version.cuda or "12").split(".")[0])
    arch_list = "7.5;8.0;9.0+PTX" if major >= 13 else "7.0;8.0;9.0+PTX"
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    print(f"nas3d_fast: no GPU visible and TORCH_CUDA_ARCH_LIST unset: compiling for {arch_list}")


def extensions():
    with_cuda = _want_cuda()
    sources = _sources("csrc/**/*.cpp") + _sources("python/*.cpp")
    # -fno-trapping-math lets GCC if-convert floating-point compares, which the pooling loops need
    # to vectorise; nothing here relies on floating-point exception flags.
    cxx = ["-O3", "-fno-trapping-math", "-fopenmp", "-fvisibility=hidden"]
    link = ["-fopenmp"]
    macros = []
    sanitize = os.environ.get("NAS3D_SANITIZE", "").strip()
    if sanitize:
        if with_cuda:
            raise RuntimeError("NAS3D_SANITIZE instruments the CPU kernels only: set FORCE_CPU=1")
        cxx = ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={sanitize}", *cxx[1:]]
        link = [f"-fsanitize={sanitize}", *link]
    if with_cuda:
        _default_cuda_arch_list()
        sources += _sources("csrc/**/*.cu")
        macros.append(("NAS3D_WITH_CUDA", None))
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        ext = cpp_extension.CUDAExtension(
            "nas3d_fast._C",
            sources,
            define_macros=macros,
            include_dirs=_pip_cuda_includes(),
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "nas3d_fast._C",
            sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    what = "CPU and CUDA" if with_cuda else "CPU"
    extra = f", -fsanitize={sanitize}" if sanitize else ""
    print(f"nas3d_fast: building _C with {what} kernels ({len(sources)} sources){extra}")
    return [ext]


setup(
    ext_modules=[] if _flag("NAS3D_METADATA_ONLY") else extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
