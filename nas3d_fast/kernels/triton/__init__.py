"""Triton kernels of the nas3d ops, registered with torch.library.triton_op (sm_80+ GPUs, or CPU tensors
under TRITON_INTERPRET=1 for testing). Imported lazily: importing nas3d_fast does not import triton."""
