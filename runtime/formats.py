"""Every packed weight format, defined once.

This module is the single source of truth for packed layouts. The torch layers, the ONNX function bodies,
the TVM kernels, the C kernels (`kernels_arm/include/edgevla/formats.h` mirrors this file bit for bit) and
the tests all go through the registry below. Adding a format means adding one `FormatSpec` here and its
kernels elsewhere.

A weight matrix is always W[N, K]: N output features (rows), K input features; y = x @ W.T.

binary (1-bit, XNOR-Net style sign x per-group scale)
    arrays  bits    uint8   [N, Kp / 8]      sign bits, bit 1 = +1, bit 0 = -1 (w >= 0 packs as +1).
                                              Weight k of a row is bit (k % 8) of byte k // 8: LSB first.
            scales  float16 [N, Kp / G]      scale of group g = mean |w| over the group's real weights,
                                              summed in float64, divided, rounded to float32, then float16.
    attrs   in_features K, group_size G (a multiple of 8).
    padding Kp = ceil(K / G) * G. Padded weights are bit 0 and are excluded from the scale; kernels must
            read only the first K weights of a row (the padding bits carry no meaning).
    value   W[n, k] = (2 * bit(n, k) - 1) * scales[n, k // G]

nm (N:M structured sparsity, "n of every m kept")
    arrays  values  float16 [N, Kp / m * n]  kept weights, group by group, in ascending index order.
            indices uint8   [N, ceil(Kp / m * n * b / 8)]
                                              position of each kept weight inside its group of m, as
                                              b = ceil(log2(m)) bit fields packed LSB first into one bit
                                              stream per row (field j starts at bit j * b).
    attrs   in_features K, n, m.
    padding Kp = ceil(K / m) * m; padded weights are zeros and may be "kept" (value 0).
    choice  the n largest |w| of each group; ties go to the lower index.
    value   W[n, g*m + idx] = value for each kept (idx, value); all other weights are 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["FORMAT_VERSION", "PackedWeight", "FormatSpec", "REGISTRY", "register", "get_format",
           "packed_from_arrays", "expected_shapes", "padded_length", "index_bits", "BINARY_DEFAULT_GROUP",
           "pack_binary", "unpack_binary", "pack_nm", "unpack_nm", "nm_keep_mask", "nm_unpack_indices"]

FORMAT_VERSION = 1  # bumped whenever any layout below changes; recorded in exported files and bundles


@dataclass(frozen=True)
class PackedWeight:
    """A packed weight matrix: its format name, named arrays and integer attributes."""

    format: str
    arrays: dict[str, np.ndarray]
    attrs: dict[str, int]
    out_features: int

    @property
    def in_features(self) -> int:
        return int(self.attrs["in_features"])

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def bits_per_weight(self) -> float:
        """Stored bits (signs, scales, values, indices; not bias) per weight of the dense matrix."""
        return 8.0 * self.nbytes / (self.out_features * self.in_features)


@dataclass(frozen=True)
class FormatSpec:
    """One registry entry: how a format is laid out and its plain numpy reference operations."""

    name: str
    summary: str
    array_names: tuple[str, ...]  # order of the packed arrays (ONNX inputs after X, kernel arguments)
    attr_names: tuple[str, ...]  # integer attributes (ONNX attributes, kernel constants)
    pack: Callable[..., PackedWeight]
    unpack: Callable[[PackedWeight], np.ndarray]
    matmul_ref: Callable[[np.ndarray, PackedWeight], np.ndarray] = field(repr=False, default=None)

    def __post_init__(self):
        if self.matmul_ref is None:
            object.__setattr__(self, "matmul_ref", _dense_matmul_ref(self.unpack))


def _dense_matmul_ref(unpack):
    def matmul_ref(x: np.ndarray, packed: PackedWeight) -> np.ndarray:
        """y[..., N] = x[..., K] @ unpack(packed).T, accumulated in float64, returned as float32."""
        x = np.asarray(x)
        if x.shape[-1] != packed.in_features:
            raise ValueError(f"activation has {x.shape[-1]} features, the packed weight expects "
                             f"{packed.in_features}")
        return (x.astype(np.float64) @ unpack(packed).astype(np.float64).T).astype(np.float32)
    return matmul_ref


def padded_length(k: int, block: int) -> int:
    """K rounded up to a whole number of blocks."""
    return -(-k // block) * block


def _check_weight(weight: np.ndarray) -> np.ndarray:
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"expected a weight matrix [out_features, in_features], got shape {weight.shape}")
    if not np.all(np.isfinite(weight)):
        bad = np.argwhere(~np.isfinite(weight))[0]
        raise ValueError(f"weight has a NaN or inf at row {bad[0]}, column {bad[1]}; "
                         "fix the model (or its training) before compressing")
    return weight.astype(np.float32)


# --------------------------------------------------------------------------------------------- binary
BINARY_DEFAULT_GROUP = 64


def pack_binary(weight: np.ndarray, *, group_size: int = BINARY_DEFAULT_GROUP) -> PackedWeight:
    weight = _check_weight(weight)
    if group_size <= 0 or group_size % 8:
        raise ValueError(f"binary group_size must be a positive multiple of 8, got {group_size}")
    n, k = weight.shape
    kp = padded_length(k, group_size)
    padded = np.zeros((n, kp), dtype=np.float32)
    padded[:, :k] = weight
    valid = np.zeros((n, kp), dtype=bool)
    valid[:, :k] = True
    bits = (padded >= 0) & valid
    packed_bits = np.packbits(bits, axis=1, bitorder="little")
    groups = kp // group_size
    magnitude = np.abs(padded).astype(np.float64).reshape(n, groups, group_size)
    counts = valid.reshape(n, groups, group_size).sum(axis=2)
    sums = np.zeros((n, groups), dtype=np.float64)
    for j in range(group_size):  # sequential sum: the C header does the same, so scales match bit for bit
        sums += magnitude[:, :, j]
    with np.errstate(over="ignore"):  # a mean |w| above 65504 becomes inf in float16, as in C
        scales = (sums / np.maximum(counts, 1)).astype(np.float32).astype(np.float16)
    return PackedWeight("binary", {"bits": packed_bits, "scales": scales},
                        {"in_features": k, "group_size": group_size}, n)


def unpack_binary(packed: PackedWeight) -> np.ndarray:
    k, g = packed.attrs["in_features"], packed.attrs["group_size"]
    bits = np.unpackbits(packed.arrays["bits"], axis=1, bitorder="little").astype(np.float32)
    signs = 2.0 * bits - 1.0
    scales = np.repeat(packed.arrays["scales"].astype(np.float32), g, axis=1)
    return (signs * scales)[:, :k]


# ------------------------------------------------------------------------------------------------- nm
def index_bits(m: int) -> int:
    """Bits per N:M index field."""
    return max(1, math.ceil(math.log2(m)))


def nm_keep_mask(weight: np.ndarray, n: int, m: int) -> np.ndarray:
    """Boolean [N, Kp] mask of the n largest |w| per group of m (ties to the lower index)."""
    rows, k = weight.shape
    kp = padded_length(k, m)
    padded = np.zeros((rows, kp), dtype=np.float32)
    padded[:, :k] = weight
    groups = np.abs(padded).reshape(rows, kp // m, m)
    order = np.argsort(-groups, axis=2, kind="stable")[:, :, :n]
    mask = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(mask, order, True, axis=2)
    return mask.reshape(rows, kp)


def pack_nm(weight: np.ndarray, *, n: int = 2, m: int = 4, mask: np.ndarray | None = None) -> PackedWeight:
    """Pack keeping the n largest |w| of every m, or exactly the weights `mask` (shape [N, K]) marks."""
    weight = _check_weight(weight)
    if not (0 < n <= m <= 256):
        raise ValueError(f"N:M needs 0 < n <= m <= 256, got n={n}, m={m}")
    rows, k = weight.shape
    kp = padded_length(k, m)
    if mask is None:
        keep = nm_keep_mask(weight, n, m)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != weight.shape:
            raise ValueError(f"mask shape {mask.shape} does not match weight shape {weight.shape}")
        keep = np.zeros((rows, kp), dtype=bool)
        keep[:, :k] = mask
        per_group = keep.reshape(rows, kp // m, m).sum(axis=2)
        if np.any(per_group > n):
            raise ValueError(f"mask keeps more than {n} of {m} weights in some group")
        # Groups with fewer than n marked weights keep extra zero-valued slots (lowest free indices).
        for r, g in zip(*np.nonzero(per_group < n)):
            free = np.flatnonzero(~keep[r, g * m:(g + 1) * m])[: n - per_group[r, g]]
            keep[r, g * m + free] = True
    padded = np.zeros((rows, kp), dtype=np.float32)
    padded[:, :k] = weight if mask is None else np.where(mask, weight, 0.0)
    kept_groups = keep.reshape(rows, kp // m, m)
    positions = np.nonzero(kept_groups)  # row-major: ascending index within each group
    idx = positions[2].reshape(rows, -1).astype(np.int64)
    values = padded.reshape(rows, kp // m, m)[positions].reshape(rows, -1).astype(np.float16)
    b = index_bits(m)
    fields = idx.shape[1]
    bit_matrix = ((idx[:, :, None] >> np.arange(b)) & 1).astype(bool).reshape(rows, fields * b)
    indices = np.packbits(bit_matrix, axis=1, bitorder="little")
    return PackedWeight("nm", {"values": values, "indices": indices}, {"in_features": k, "n": n, "m": m}, rows)


def nm_unpack_indices(packed: PackedWeight) -> np.ndarray:
    n, m = packed.attrs["n"], packed.attrs["m"]
    b = index_bits(m)
    fields = packed.arrays["values"].shape[1]
    bits = np.unpackbits(packed.arrays["indices"], axis=1, bitorder="little")[:, : fields * b]
    bits = bits.reshape(-1, fields, b).astype(np.int64)
    return (bits << np.arange(b)).sum(axis=2)


def unpack_nm(packed: PackedWeight) -> np.ndarray:
    k, n, m = packed.attrs["in_features"], packed.attrs["n"], packed.attrs["m"]
    rows, fields = packed.arrays["values"].shape
    idx = nm_unpack_indices(packed)
    group_start = (np.arange(fields) // n) * m
    dense = np.zeros((rows, padded_length(k, m)), dtype=np.float32)
    np.put_along_axis(dense, idx + group_start, packed.arrays["values"].astype(np.float32), axis=1)
    return dense[:, :k]


# ------------------------------------------------------------------------------------------- registry
REGISTRY: dict[str, FormatSpec] = {}


def register(spec: FormatSpec) -> FormatSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"format {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


register(FormatSpec(name="binary", summary="1-bit sign x float16 scale per group of G input weights",
                    array_names=("bits", "scales"), attr_names=("in_features", "group_size"),
                    pack=pack_binary, unpack=unpack_binary))
register(FormatSpec(name="nm", summary="N:M structured sparsity: float16 kept values + packed indices",
                    array_names=("values", "indices"), attr_names=("in_features", "n", "m"),
                    pack=pack_nm, unpack=unpack_nm))


def get_format(name: str) -> FormatSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown packed format {name!r}; known formats: {sorted(REGISTRY)}") from None


def packed_from_arrays(name: str, arrays: dict[str, np.ndarray], attrs: dict[str, int],
                       out_features: int) -> PackedWeight:
    """Rebuild a PackedWeight from stored arrays, checking their shapes against the layout rules."""
    spec = get_format(name)
    missing = set(spec.array_names) - set(arrays) or set(spec.attr_names) - set(attrs)
    if missing:
        raise ValueError(f"format {name!r} needs {missing}, got arrays {sorted(arrays)} attrs {sorted(attrs)}")
    packed = PackedWeight(name, dict(arrays), {k: int(attrs[k]) for k in spec.attr_names}, out_features)
    expected = expected_shapes(packed)
    for key, shape in expected.items():
        if tuple(arrays[key].shape) != shape:
            raise ValueError(f"format {name!r} array {key!r}: expected shape {shape}, got {arrays[key].shape}")
    return packed


def expected_shapes(packed: PackedWeight) -> dict[str, tuple[int, ...]]:
    """The array shapes the layout rules give for this packed weight's attributes."""
    rows, a = packed.out_features, packed.attrs
    if packed.format == "binary":
        kp = padded_length(a["in_features"], a["group_size"])
        return {"bits": (rows, kp // 8), "scales": (rows, kp // a["group_size"])}
    if packed.format == "nm":
        fields = padded_length(a["in_features"], a["m"]) // a["m"] * a["n"]
        return {"values": (rows, fields), "indices": (rows, -(-fields * index_bits(a["m"]) // 8))}
    raise KeyError(packed.format)
