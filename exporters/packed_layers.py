"""Torch layers that hold packed weights and run them in eager mode.

Each packed format gets one `torch.library` custom op whose eager implementation unpacks the weight with
the layout of `edgevla.runtime.formats` (the reference), so `torch.onnx.export` sees one node per layer and
the ONNX exporter can turn it into one `ai.edgevla` custom op.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgevla.runtime import formats

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def unpack_binary_torch(bits: torch.Tensor, scales: torch.Tensor, in_features: int, group_size: int) -> torch.Tensor:
    """Dense float32 [N, K] from binary-format tensors (same rules as formats.unpack_binary)."""
    n = bits.shape[0]
    signs = ((bits.unsqueeze(-1) >> _SHIFTS.to(bits.device)) & 1).reshape(n, -1).to(torch.float32) * 2.0 - 1.0
    expanded = scales.to(torch.float32).repeat_interleave(group_size, dim=1)
    return (signs * expanded)[:, :in_features]


@torch.library.custom_op("edgevla::binary_matmul", mutates_args=())
def binary_matmul(x: torch.Tensor, bits: torch.Tensor, scales: torch.Tensor, in_features: int,
                  group_size: int) -> torch.Tensor:
    """y = x @ W.T with W in the `binary` packed format."""
    return x @ unpack_binary_torch(bits, scales, in_features, group_size).T


@binary_matmul.register_fake
def _binary_matmul_fake(x, bits, scales, in_features, group_size):
    return x.new_empty((*x.shape[:-1], bits.shape[0]))


class PackedLinear(nn.Module):
    """Base of all packed Linear layers: buffers named after the format's arrays, an optional bias."""

    format_name: str = ""

    def __init__(self, packed: formats.PackedWeight, bias: torch.Tensor | None, *, method: str):
        super().__init__()
        if packed.format != self.format_name:
            raise ValueError(f"{type(self).__name__} holds format {self.format_name!r}, got {packed.format!r}")
        self.in_features = packed.in_features
        self.out_features = packed.out_features
        self.attrs = dict(packed.attrs)
        self.method = method
        for name, array in packed.arrays.items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(array)))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().to(torch.float32),
                                                           requires_grad=False)

    def packed(self) -> formats.PackedWeight:
        arrays = {name: getattr(self, name).cpu().numpy() for name in formats.get_format(self.format_name).array_names}
        return formats.PackedWeight(self.format_name, arrays, dict(self.attrs), self.out_features)

    @property
    def bits_per_weight(self) -> float:
        return self.packed().bits_per_weight

    def dense_weight(self) -> torch.Tensor:
        return torch.from_numpy(formats.get_format(self.format_name).unpack(self.packed()))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format_name}, "
                f"attrs={self.attrs}, method={self.method}")


class BinaryLinear(PackedLinear):
    format_name = "binary"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = binary_matmul(x, self.bits, self.scales, self.attrs["in_features"], self.attrs["group_size"])
        return y if self.bias is None else y + self.bias


PACKED_LINEAR_TYPES: dict[str, type[PackedLinear]] = {"binary": BinaryLinear}
