// Argument checks shared by the CPU and CUDA entry points. Messages name the argument and the
// expected form; the Python layer validates first, so these guard direct torch.ops.nas3d callers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define NAS3D_CHECK_FLOATING(t, name)                                                         \
  TORCH_CHECK((t).is_floating_point(), name " must be a floating tensor, got ", (t).scalar_type())

#define NAS3D_CHECK_DIM(t, name, d) \
  TORCH_CHECK((t).dim() == (d), name " must have ", d, " dimensions, got shape ", (t).sizes())

#define NAS3D_CHECK_SAME_SHAPE(a, b, name_a, name_b)                                         \
  TORCH_CHECK((a).sizes() == (b).sizes(), name_b " must have the shape of " name_a " ",      \
              (a).sizes(), ", got ", (b).sizes())

#define NAS3D_CHECK_SAME_DEVICE(a, b, name_a, name_b)                                                   \
  TORCH_CHECK((a).device() == (b).device(), name_b " must be on the device of " name_a " (", (a).device(), \
              "), got ", (b).device())

#define NAS3D_CHECK_SAME_DTYPE(a, b, name_a, name_b)                                                      \
  TORCH_CHECK((a).scalar_type() == (b).scalar_type(), name_b " must have the dtype of " name_a " (",      \
              (a).scalar_type(), "), got ", (b).scalar_type())
