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


def _binary_matmul_backward(ctx, grad):
    weight = unpack_binary_torch(ctx.bits, ctx.scales, ctx.in_features, ctx.group_size)
    return grad @ weight.to(grad.dtype), None, None, None, None


def _binary_matmul_setup(ctx, inputs, output):
    _, ctx.bits, ctx.scales, ctx.in_features, ctx.group_size = inputs


# Gradients flow to the activations (policy-aware calibration, straight-through fine-tuning), never to the
# packed weights themselves.
binary_matmul.register_autograd(_binary_matmul_backward, setup_context=_binary_matmul_setup)


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
        return torch.from_numpy(formats.unpack(self.packed()))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format_name}, "
                f"attrs={self.attrs}, method={self.method}")


class BinaryLinear(PackedLinear):
    format_name = "binary"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = binary_matmul(x, self.bits, self.scales, self.attrs["in_features"], self.attrs["group_size"])
        return y if self.bias is None else y + self.bias


def _define_packed_op(format_name: str):
    """One torch custom op per format, `edgevla::<format>_matmul(x, *arrays, *int attrs)`. Export traces it
    (fake implementation) into a single node; its real implementation decodes with the numpy reference."""
    spec = formats.get_format(format_name)
    arrays = ", ".join(f"Tensor {a}" for a in spec.array_names)
    attrs = ", ".join(f"int {a}" for a in spec.attr_names)
    qualified = f"edgevla::{format_name}_matmul"
    torch.library.define(qualified, f"(Tensor x, {arrays}, {attrs}) -> Tensor")

    @torch.library.impl(qualified, "CompositeExplicitAutograd")
    def _impl(x, *args):
        tensors, ints = args[:len(spec.array_names)], args[len(spec.array_names):]
        packed = formats.PackedWeight(format_name, {n: t.cpu().numpy() for n, t in zip(spec.array_names, tensors)},
                                      dict(zip(spec.attr_names, ints)), formats.out_features_of(format_name, tensors))
        return x @ torch.from_numpy(spec.unpack(packed)).to(x).T

    @torch.library.register_fake(qualified)
    def _fake(x, *args):
        tensors = args[:len(spec.array_names)]
        return x.new_empty((*x.shape[:-1], formats.out_features_of(format_name, tensors)))

    return getattr(torch.ops.edgevla, f"{format_name}_matmul").default


PACKED_OPS = {name: _define_packed_op(name) for name in ("nm", "haar_binary", "binary_split", "dense_sparse",
                                                          "group_sparse")}


def _define_packed_conv_op(format_name: str):
    """`edgevla::<format>_conv2d(x, *arrays, *int attrs, kernel_shape, strides, pads, dilations)`: a Conv2d
    whose weight [O, C*kh*kw] is packed; pads in ONNX order (begin..., end...)."""
    spec = formats.get_format(format_name)
    arrays = ", ".join(f"Tensor {a}" for a in spec.array_names)
    attrs = ", ".join(f"int {a}" for a in spec.attr_names)
    qualified = f"edgevla::{format_name}_conv2d"
    torch.library.define(qualified, f"(Tensor x, {arrays}, {attrs}, int[] kernel_shape, int[] strides, int[] pads, "
                                    "int[] dilations) -> Tensor")
    count = len(spec.array_names)

    @torch.library.impl(qualified, "CompositeExplicitAutograd")
    def _impl(x, *args):
        tensors, ints = args[:count], args[count:count + len(spec.attr_names)]
        kernel, strides, pads, dilations = args[count + len(spec.attr_names):]
        rows = formats.out_features_of(format_name, tensors)
        packed = formats.PackedWeight(format_name, {n: t.cpu().numpy() for n, t in zip(spec.array_names, tensors)},
                                      dict(zip(spec.attr_names, ints)), int(rows))
        weight = torch.from_numpy(spec.unpack(packed)).to(x).reshape(rows, -1, *kernel)
        return torch.nn.functional.conv2d(x, weight, None, strides, pads[:2], dilations)

    @torch.library.register_fake(qualified)
    def _fake(x, *args):
        tensors = args[:count]
        kernel, strides, pads, dilations = args[count + len(spec.attr_names):]
        out = [(x.shape[2 + i] + 2 * pads[i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1 for i in range(2)]
        return x.new_empty((x.shape[0], formats.out_features_of(format_name, tensors), *out))

    return getattr(torch.ops.edgevla, f"{format_name}_conv2d").default


PACKED_CONV_OPS = {name: _define_packed_conv_op(name) for name in formats.REGISTRY}


class DecodedLinear(PackedLinear):
    """Formats whose eager forward multiplies by the format's reference decoding (cached, not saved);
    under torch.export the layer is one `edgevla::<format>_matmul` node instead. The packed arrays
    remain the module's state."""

    def __init__(self, packed, bias, *, method):
        self.format_name = packed.format
        super().__init__(packed, bias, method=method)
        self._decoded: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() and self.format_name in PACKED_OPS:
            spec = formats.get_format(self.format_name)
            y = PACKED_OPS[self.format_name](x, *(getattr(self, a) for a in spec.array_names),
                                             *(int(self.attrs[a]) for a in spec.attr_names))
            return y if self.bias is None else y + self.bias
        if self._decoded is None or self._decoded.device != x.device:
            self._decoded = self.dense_weight().to(x.device)
        y = x @ self._decoded.to(x.dtype).T
        return y if self.bias is None else y + self.bias


class PackedConv2d(DecodedLinear):
    """A Conv2d whose weight [O, C, kh, kw] is packed as the matrix [O, C*kh*kw] (im2col order)."""

    def __init__(self, packed, bias, *, method, conv: nn.Conv2d):
        super().__init__(packed, bias, method=method)
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            spec = formats.get_format(self.format_name)
            y = PACKED_CONV_OPS[self.format_name](
                x, *(getattr(self, a) for a in spec.array_names), *(int(self.attrs[a]) for a in spec.attr_names),
                list(self.kernel_size), list(self.stride), list(self.padding) * 2, list(self.dilation))
            return y if self.bias is None else y + self.bias[None, :, None, None]
        if self._decoded is None or self._decoded.device != x.device:
            self._decoded = self.dense_weight().to(x.device)
        weight = self._decoded.to(x.dtype).reshape(self.out_channels, self.in_channels, *self.kernel_size)
        return torch.nn.functional.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation)


PACKED_LINEAR_TYPES: dict[str, type[PackedLinear]] = {"binary": BinaryLinear}


def packed_linear(packed: formats.PackedWeight, bias: torch.Tensor | None, *, method: str) -> PackedLinear:
    """The torch layer for a packed weight of any registered format."""
    layer_type = PACKED_LINEAR_TYPES.get(packed.format, DecodedLinear)
    return layer_type(packed, bias, method=method)


def packed_module(packed: formats.PackedWeight, original: nn.Module, *, method: str) -> PackedLinear:
    """Replacement for `original` (nn.Linear or nn.Conv2d) holding `packed`."""
    if isinstance(original, nn.Conv2d):
        return PackedConv2d(packed, original.bias, method=method, conv=original)
    return packed_linear(packed, original.bias, method=method)


def compressible(module: nn.Module) -> bool:
    """Linear layers, and plain Conv2d layers (no groups, zero padding)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" and \
        not isinstance(module.padding, str)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as the matrix [out, in] that formats pack (Conv2d: [O, C*kh*kw], im2col order)."""
    return module.weight.detach().reshape(module.weight.shape[0], -1)


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where the submodule called `name` (dotted path) is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
