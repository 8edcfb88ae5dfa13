// The nas3d_fast._C Python module. Loading it runs the TORCH_LIBRARY registrations in csrc/, which
// define torch.ops.nas3d.*; the functions here are the non-tensor helpers Python needs.
#include <torch/extension.h>

#include "../csrc/common/build_info.h"
#include "../csrc/dints/decode.h"
#include "../csrc/gumbel/gumbel_python.h"

#include <pybind11/stl.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "nas3d_fast compiled kernels (CPU, and CUDA when built with it)";
  m.def("cxx_compiler", &nas3d::cxx_compiler, "The C++ compiler that built the CPU kernels.");
  m.def("cuda_compiled", &nas3d::cuda_compiled, "True when the CUDA kernels were compiled in.");
  m.def("cuda_compiler", &nas3d::cuda_compiler, "The nvcc version of the CUDA kernels, or ''.");
  m.def("dints_decode", &nas3d::dints_decode, "DiNTS topology decode (csrc/dints/decode.h): one edge mask per layer.",
        pybind11::arg("log_alpha"), pybind11::arg("layers"), pybind11::arg("edge_in"), pybind11::arg("edge_out"),
        pybind11::arg("num_scales"));
  m.def("gumbel_topk_sample_pair", &nas3d::gumbel::gumbel_topk_sample_pair,
        "nas3d::gumbel_topk_sample through the dispatcher with the default generator -> (weights, indices); "
        "the eager fast path of nas3d_fast.ops.gumbel_topk (csrc/gumbel/gumbel_python.h).",
        pybind11::arg("logits"), pybind11::arg("tau"), pybind11::arg("k"), pybind11::arg("hard"),
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
