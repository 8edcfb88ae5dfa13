"""Hand-built networks and a toy search space for the profiler's tests (tests/test_profile_*.py)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from nas3d_fast import spaces
from nas3d_fast.nn import AxialAttentionBlock3d, MixedEdge3d
from nas3d_fast.spaces import Arch, SearchSpace, check_vector


class EdgeNet(nn.Module):
    """A small supernet-like network of nas3d ops: MixedEdge3d edges (shared and per_op norms, a
    reduction edge) with their architecture weights, an AxialAttentionBlock3d, a transposed conv."""

    def __init__(self, c: int = 8, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv3d(1, c, 3, padding=1)
        self.e1 = MixedEdge3d(c, c, ("identity", "conv3x3x3", "p3d_3x3x1_1x1x3", "sep_dil3x3x3_r2", "max_pool3"))
        self.e2 = MixedEdge3d(
            c, c, ("conv3x3x3", "sep_dil3x3x3_r3", "avg_pool3", "zero"), norm="per_op", act="leaky_relu"
        )
        self.down = MixedEdge3d(c, 2 * c, ("conv3x3x3", "conv1x3x3"), stride=2)
        self.att = AxialAttentionBlock3d(2 * c, num_heads=2)
        self.up = nn.ConvTranspose3d(2 * c, c, 2, stride=2)
        self.head = nn.Conv3d(c, classes, 1)
        self.a1, self.a2, self.a3 = (nn.Parameter(torch.zeros(k)) for k in (5, 4, 2))

    def forward(self, x):
        h = self.stem(x)
        h = self.e1(h, self.a1.softmax(0))
        h = self.e2(h, self.a2.softmax(0))
        d = self.att(self.down(h, self.a3.softmax(0)))
        return self.head(h + self.up(d))


class SmallUNet(nn.Module):
    """Plain torch layers: conv, instance and batch norm, strided conv, transposed conv, trilinear
    upsampling, concatenation."""

    def __init__(self, c: int = 8, classes: int = 3):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv3d(1, c, 3, padding=1), nn.InstanceNorm3d(c, affine=True), nn.LeakyReLU(inplace=True)
        )
        self.down = nn.Sequential(nn.Conv3d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm3d(2 * c), nn.ReLU())
        self.up = nn.ConvTranspose3d(2 * c, c, 2, stride=2)
        self.head = nn.Conv3d(2 * c, classes, 1)

    def forward(self, x):
        a = self.enc(x)
        d = self.down(a)
        u = self.up(d) + F.interpolate(d, scale_factor=2, mode="trilinear")[:, : a.shape[1]]
        return self.head(torch.cat([a, u], 1))


@dataclasses.dataclass(frozen=True)
class WidthArch(Arch):
    space = "toy_profile_test"
    width: int  # index into WidthSpace.WIDTHS
    kernel: int  # 0: 1x1x1, 1: 3x3x3


class WidthSpace(SearchSpace):
    """Two convolutions whose width and kernel are searched: peaks differ by candidate."""

    name = "toy_profile_test"
    arch_type = WidthArch
    stride = 2
    WIDTHS = (2, 4, 8, 16, 32)

    def sample(self, rng=None):
        r = spaces.as_rng(rng)
        return WidthArch(int(r.integers(0, len(self.WIDTHS))), int(r.integers(0, 2)))

    def vector_choices(self):
        return [len(self.WIDTHS), 2]

    def encode(self, arch):
        return check_vector([arch.width, arch.kernel], self.vector_choices(), self.name)

    def decode(self, vector):
        return WidthArch(*check_vector(vector, self.vector_choices(), self.name))

    def build(self, arch, in_channels, num_classes):
        w, k = self.WIDTHS[arch.width], 1 + 2 * arch.kernel
        return nn.Sequential(
            nn.Conv3d(in_channels, w, k, padding=k // 2), nn.ReLU(), nn.Conv3d(w, num_classes, k, padding=k // 2)
        )

    def supernet(self, in_channels, num_classes, **options):
        raise NotImplementedError("the toy space has no supernet")


spaces.register(WidthSpace)


class StridedConvNet(nn.Module):
    """One strided convolution between a pointwise stem and head: its backward is the step's peak,
    so the prediction tests the workspace model of that backward (oneDNN's strided kernels)."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int], classes: int = 2):
        super().__init__()
        self.stem = nn.Conv3d(1, c_in, 1)
        padding = tuple(k // 2 for k in kernel)
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=2, padding=padding, bias=False)
        self.head = nn.Conv3d(c_out, classes, 1)

    def forward(self, x):
        return F.interpolate(self.head(self.conv(self.stem(x))), scale_factor=2)
