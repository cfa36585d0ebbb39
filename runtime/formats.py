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

binary_split (BiLLM style: salient columns with residual binarization, the rest split in two magnitudes)
    arrays  salient_idx   uint16  [S]              salient input columns, ascending.
            bits          uint8   [N, Kp / 8]      first-pass sign of every weight (as in `binary`).
            residual_bits uint8   [N, ceil(S / 8)] second-pass sign of the salient weights, in salient_idx
                                                   order, LSB first.
            split_bits    uint8   [N, Kp / 8]      1 = the weight is in the "outer" (large |w|) group, 0 =
                                                   "concentrated"; always 0 for salient columns and padding.
            scales        float16 [N, Kp / B, 4]   per row and block of B columns: salient first-pass,
                                                   salient residual, concentrated, outer.
    attrs   in_features K, block_size B (a multiple of 8), salient S.
    value   salient:  a1 * s1 + a2 * s2;  others: (outer ? a_outer : a_concentrated) * s,  s = 2*bit - 1.

haar_binary (HBVLA style: salient columns kept with residual binarization, the rest 1-bit in the Haar domain)
    arrays  salient_idx           uint16  [S]              salient input columns, ascending.
            salient_bits          uint8   [S, ceil(N/8)]   first-pass signs of each salient column over the N
                                                           rows, LSB first (column-major: no per-row padding).
            salient_residual_bits uint8   [S, ceil(N/8)]   second-pass signs, same layout.
            salient_scales        float16 [2, S]           per salient column: first-pass, residual scale.
            bits                  uint8   [N, Kh / 8]      sign of each Haar-domain weight.
            scale_codes           uint8   [N, Kh / G]      group scale = scale_base * 2^((code - 255) / 16),
                                                           code 0 = 0 (8-bit log scales: 4.4% steps).
            scale_base            float32 [1]              the largest group scale of the layer.
    attrs   in_features K, salient S, group_size G (a multiple of 8 dividing Kh).
    Haar    the other Kn = K - S columns (ascending) form u, zero-padded to Kh = ceil(Kn / 16) * 16;
            haar(u) = [(u[0::2] + u[1::2]) / sqrt(2), (u[0::2] - u[1::2]) / sqrt(2)] (low band, high band).
            A kernel computes haar(x[others]) once per row of activations, then
            y = haar(x_others) @ Wh.T + x[salient] @ Ws.T: no dense weight is ever formed.
    value   Wh[n, j] = scale(n, j // G) * s;  W[n, others] = inverse_haar(Wh[n])[:Kn];
            W[n, salient_j] = salient_scales[0, j] * s1 + salient_scales[1, j] * s2.

dense_sparse (CoSpaDi / DSFormer style: W = D S, D dense, S column-sparse)
    arrays  dictionary float16 [N, A]        A dense atoms (columns of D).
            values     float16 [K, s]        column j of S has s nonzeros: values[j] ...
            atom_idx   uint8   [K, s]        ... at atoms atom_idx[j] (uint16 when A > 256).
    attrs   in_features K, atoms A, nonzeros s.
    value   W[:, j] = sum_t dictionary[:, atom_idx[j, t]] * values[j, t].
            A kernel computes z = x S^T (s multiply-adds per input) then y = z D^T (A x N).

group_sparse (SparseByteNN style: fine-grained groups of g consecutive inputs, row-balanced)
    arrays  values    float16 [N, r * g]    the r kept groups of each row, g weights each, in index order.
            group_idx uint16  [N, r]        ascending group numbers (group q covers inputs q*g .. q*g+g-1).
    attrs   in_features K, group g, kept r.  Kp = ceil(K / g) * g, padded weights are 0.
    value   W[n, group_idx[n, i] * g + t] = values[n, i * g + t]; all other weights are 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["FORMAT_VERSION", "PackedWeight", "FormatSpec", "REGISTRY", "register", "get_format",
           "packed_from_arrays", "expected_shapes", "padded_length", "index_bits", "BINARY_DEFAULT_GROUP",
           "pack_binary", "unpack_binary", "pack_nm", "unpack_nm", "nm_keep_mask", "nm_unpack_indices",
           "pack_binary_split", "unpack_binary_split", "pack_haar_binary", "unpack_haar_binary",
           "haar_binary_parts", "haar_forward", "haar_inverse", "haar_padded_length", "haar_other_columns",
           "encode_log_scales", "decode_log_scales", "packed_nbytes", "unpack", "out_features_of", "pack_dense_sparse", "unpack_dense_sparse",
           "pack_group_sparse", "unpack_group_sparse"]

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
    m = packed.attrs["m"]
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


# ------------------------------------------------------------------------------------ binary_split
def _bits(matrix: np.ndarray) -> np.ndarray:
    """Pack a boolean [rows, cols] matrix LSB first per row (cols padded to whole bytes)."""
    return np.packbits(np.asarray(matrix, dtype=bool), axis=1, bitorder="little")


def _unbits(packed: np.ndarray, cols: int) -> np.ndarray:
    return np.unpackbits(packed, axis=1, bitorder="little")[:, :cols].astype(bool)


def _check_salient(salient_idx: np.ndarray, k: int) -> np.ndarray:
    idx = np.asarray(salient_idx, dtype=np.int64).reshape(-1)
    if idx.size and (np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= k):
        raise ValueError(f"salient columns must be unique, ascending and in [0, {k}), got {idx.tolist()}")
    if k > 65535:
        raise ValueError(f"salient column indices are uint16: in_features {k} is too large")
    return idx


def pack_binary_split(*, signs: np.ndarray, residual_signs: np.ndarray, outer: np.ndarray, scales: np.ndarray,
                      salient_idx: np.ndarray, block_size: int) -> PackedWeight:
    """Pack an already binarized BiLLM-style layer.

    signs [N, K] bool (True = +1), residual_signs [N, S] bool, outer [N, K] bool (ignored on salient
    columns), scales [N, ceil(K / block_size), 4] float (a1, a2, a_concentrated, a_outer).
    """
    signs = np.asarray(signs, dtype=bool)
    n, k = signs.shape
    if block_size <= 0 or block_size % 8:
        raise ValueError(f"block_size must be a positive multiple of 8, got {block_size}")
    idx = _check_salient(salient_idx, k)
    kp = padded_length(k, block_size)
    if residual_signs.shape != (n, idx.size) or outer.shape != (n, k) or scales.shape != (n, kp // block_size, 4):
        raise ValueError(f"binary_split parts do not fit a [{n}, {k}] weight with {idx.size} salient columns: "
                         f"residual {residual_signs.shape}, outer {outer.shape}, scales {scales.shape}")
    full_signs = np.zeros((n, kp), dtype=bool)
    full_signs[:, :k] = signs
    full_outer = np.zeros((n, kp), dtype=bool)
    full_outer[:, :k] = outer
    full_outer[:, idx] = False
    with np.errstate(over="ignore"):
        scales16 = np.asarray(scales, dtype=np.float32).astype(np.float16)
    return PackedWeight("binary_split", {
        "salient_idx": idx.astype(np.uint16), "bits": _bits(full_signs), "residual_bits": _bits(residual_signs),
        "split_bits": _bits(full_outer), "scales": scales16}, {"in_features": k, "block_size": block_size,
                                                               "salient": int(idx.size)}, n)


def unpack_binary_split(packed: PackedWeight) -> np.ndarray:
    k, b = packed.attrs["in_features"], packed.attrs["block_size"]
    a = packed.arrays
    idx = a["salient_idx"].astype(np.int64)
    s1 = np.where(_unbits(a["bits"], k), 1.0, -1.0)
    outer = _unbits(a["split_bits"], k)
    scales = np.repeat(a["scales"].astype(np.float32), b, axis=1)[:, :k]  # [N, K, 4]
    dense = s1 * np.where(outer, scales[:, :, 3], scales[:, :, 2])
    if idx.size:
        s2 = np.where(_unbits(a["residual_bits"], idx.size), 1.0, -1.0)
        dense[:, idx] = scales[:, idx, 0] * s1[:, idx] + scales[:, idx, 1] * s2
    return dense.astype(np.float32)


# ------------------------------------------------------------------------------------- haar_binary
SCALE_CODE_STEPS_PER_OCTAVE = 16


def haar_padded_length(k: int) -> int:
    """Length of the Haar-domain vector for k non-salient inputs (both bands whole bytes)."""
    return padded_length(max(k, 1), 16)


def haar_forward(u: np.ndarray) -> np.ndarray:
    """One-level orthonormal Haar transform along the last axis (length even): [low band, high band]."""
    even, odd = u[..., 0::2], u[..., 1::2]
    return np.concatenate([(even + odd), (even - odd)], axis=-1) / np.sqrt(2.0)


def haar_inverse(h: np.ndarray) -> np.ndarray:
    half = h.shape[-1] // 2
    low, high = h[..., :half], h[..., half:]
    out = np.empty_like(h)
    out[..., 0::2] = (low + high) / np.sqrt(2.0)
    out[..., 1::2] = (low - high) / np.sqrt(2.0)
    return out


def encode_log_scales(scales: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """8-bit log-coded scales: code = 255 + round(16 * log2(scale / base)), 0 for scales that round to 0."""
    scales = np.asarray(scales, dtype=np.float64)
    base = np.float32(scales.max()) if scales.size and scales.max() > 0 else np.float32(1.0)
    with np.errstate(divide="ignore"):
        codes = 255 + np.round(SCALE_CODE_STEPS_PER_OCTAVE * np.log2(scales / float(base)))
    codes = np.where(scales > 0, np.clip(codes, 1, 255), 0)
    return codes.astype(np.uint8), base


def decode_log_scales(codes: np.ndarray, base) -> np.ndarray:
    codes = np.asarray(codes)
    values = np.float32(base) * np.exp2((codes.astype(np.float32) - 255.0) / SCALE_CODE_STEPS_PER_OCTAVE)
    return np.where(codes == 0, 0.0, values).astype(np.float32)


def haar_other_columns(k: int, salient_idx: np.ndarray) -> np.ndarray:
    mask = np.ones(k, dtype=bool)
    mask[np.asarray(salient_idx, dtype=np.int64)] = False
    return np.flatnonzero(mask)


def pack_haar_binary(*, haar_signs: np.ndarray, scale_codes: np.ndarray, scale_base: float, salient_idx: np.ndarray,
                     salient_signs: np.ndarray, salient_residual_signs: np.ndarray, salient_scales: np.ndarray,
                     in_features: int, group_size: int) -> PackedWeight:
    """Pack an already binarized HBVLA-style layer (see the module docstring for every array)."""
    k = in_features
    idx = _check_salient(salient_idx, k)
    haar_signs = np.asarray(haar_signs, dtype=bool)
    n, kh = haar_signs.shape
    if kh != haar_padded_length(k - idx.size):
        raise ValueError(f"Haar-domain width must be {haar_padded_length(k - idx.size)} for {k - idx.size} "
                         f"non-salient inputs, got {kh}")
    if group_size <= 0 or group_size % 8 or kh % group_size:
        raise ValueError(f"group_size must be a multiple of 8 dividing {kh}, got {group_size}")
    if scale_codes.shape != (n, kh // group_size):
        raise ValueError(f"scale_codes must be [{n}, {kh // group_size}], got {scale_codes.shape}")
    s = idx.size
    if salient_signs.shape != (n, s) or salient_residual_signs.shape != (n, s) or salient_scales.shape != (2, s):
        raise ValueError(f"salient parts must be [{n}, {s}], [{n}, {s}], [2, {s}]; got {salient_signs.shape}, "
                         f"{salient_residual_signs.shape}, {salient_scales.shape}")
    return PackedWeight("haar_binary", {
        "salient_idx": idx.astype(np.uint16), "salient_bits": _bits(np.asarray(salient_signs).T),
        "salient_residual_bits": _bits(np.asarray(salient_residual_signs).T),
        "salient_scales": np.asarray(salient_scales, dtype=np.float32).astype(np.float16),
        "bits": _bits(haar_signs), "scale_codes": np.asarray(scale_codes, dtype=np.uint8),
        "scale_base": np.array([scale_base], dtype=np.float32)},
        {"in_features": k, "salient": int(s), "group_size": group_size}, n)


def packed_nbytes(name: str, out_features: int, attrs: dict[str, int]) -> int:
    """Storage of a packed weight from its shape and attributes alone (what a method's bit budget uses)."""
    spec = get_format(name)
    probe = PackedWeight(name, {}, dict(attrs), out_features)
    sizes = {"salient_idx": 2, "scales": 2, "salient_scales": 2, "values": 2, "scale_base": 4, "dictionary": 2,
             "group_idx": 2, "atom_idx": 1 if attrs.get("atoms", 0) <= 256 else 2}
    return int(sum(np.prod(shape) * sizes.get(array, 1) for array, shape in expected_shapes(probe).items()
                   if array in spec.array_names))


def haar_binary_parts(packed: PackedWeight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Haar-domain weight Wh [N, Kh], salient weight Ws [N, S], salient column indices)."""
    a, g = packed.arrays, packed.attrs["group_size"]
    kh = a["bits"].shape[1] * 8
    scales = np.repeat(decode_log_scales(a["scale_codes"], a["scale_base"][0]), g, axis=1)
    wh = np.where(_unbits(a["bits"], kh), 1.0, -1.0) * scales
    s = packed.attrs["salient"]
    n = packed.out_features
    s1 = np.where(_unbits(a["salient_bits"], n).T, 1.0, -1.0).reshape(n, s)
    s2 = np.where(_unbits(a["salient_residual_bits"], n).T, 1.0, -1.0).reshape(n, s)
    sc = a["salient_scales"].astype(np.float32)
    ws = sc[0] * s1 + sc[1] * s2
    return wh.astype(np.float32), ws.astype(np.float32), a["salient_idx"].astype(np.int64)


def unpack_haar_binary(packed: PackedWeight) -> np.ndarray:
    k = packed.attrs["in_features"]
    wh, ws, idx = haar_binary_parts(packed)
    others = haar_other_columns(k, idx)
    dense = np.zeros((packed.out_features, k), dtype=np.float32)
    dense[:, others] = haar_inverse(wh.astype(np.float64))[:, : others.size]
    dense[:, idx] = ws
    return dense


def haar_binary_matmul_ref(x: np.ndarray, packed: PackedWeight) -> np.ndarray:
    """The kernel's way: transform the activations once, then two products (no dense weight)."""
    x = np.asarray(x, dtype=np.float64)
    k = packed.attrs["in_features"]
    if x.shape[-1] != k:
        raise ValueError(f"activation has {x.shape[-1]} features, the packed weight expects {k}")
    wh, ws, idx = haar_binary_parts(packed)
    others = haar_other_columns(k, idx)
    u = np.zeros((*x.shape[:-1], wh.shape[1]))
    u[..., : others.size] = x[..., others]
    return (haar_forward(u) @ wh.T.astype(np.float64) + x[..., idx] @ ws.T.astype(np.float64)).astype(np.float32)


def quantize_rows_i8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the int8-activation kernels do to each activation row: q = round(x / s), s = max|x| / 127 (1 for a
    zero row), rounding half to even. Returns (q as float64, s [rows, 1])."""
    x = np.asarray(x, dtype=np.float32)
    absmax = np.abs(x).max(axis=-1, keepdims=True)
    scale = np.where(absmax > 0, absmax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(x * (np.float32(1.0) / scale)), -127, 127)
    return q.astype(np.float64), scale.astype(np.float64)


def haar_binary_matmul_i8_ref(x: np.ndarray, packed: PackedWeight) -> np.ndarray:
    """haar_binary with int8 activations (a bundle compiled with int8 activations): the Haar-domain
    activations are quantized per row, the salient columns stay fp32."""
    x = np.asarray(x, dtype=np.float32)
    k = packed.attrs["in_features"]
    wh, ws, idx = haar_binary_parts(packed)
    others = haar_other_columns(k, idx)
    u = np.zeros((*x.shape[:-1], wh.shape[1]), np.float32)
    u[..., : others.size] = x[..., others]
    even, odd = u[..., 0::2], u[..., 1::2]
    h = np.concatenate([even + odd, even - odd], axis=-1) * np.float32(1.0 / np.sqrt(2.0))
    q, scale = quantize_rows_i8(h)
    return (scale * (q @ wh.T.astype(np.float64)) + x[..., idx].astype(np.float64) @ ws.T.astype(np.float64)).astype(
        np.float32)


# ------------------------------------------------------------------------------------ dense_sparse
def pack_dense_sparse(*, dictionary: np.ndarray, values: np.ndarray, atom_idx: np.ndarray) -> PackedWeight:
    dictionary = np.asarray(dictionary, dtype=np.float32)
    n, atoms = dictionary.shape
    k, nonzeros = np.asarray(values).shape
    atom_idx = np.asarray(atom_idx)
    if atom_idx.shape != (k, nonzeros) or atom_idx.min(initial=0) < 0 or atom_idx.max(initial=0) >= atoms:
        raise ValueError(f"atom_idx must be [{k}, {nonzeros}] with entries in [0, {atoms}), got {atom_idx.shape}")
    index_dtype = np.uint8 if atoms <= 256 else np.uint16
    return PackedWeight("dense_sparse", {"dictionary": dictionary.astype(np.float16),
                                         "values": np.asarray(values, dtype=np.float32).astype(np.float16),
                                         "atom_idx": atom_idx.astype(index_dtype)},
                        {"in_features": k, "atoms": atoms, "nonzeros": nonzeros}, n)


def unpack_dense_sparse(packed: PackedWeight) -> np.ndarray:
    a = packed.arrays
    k, atoms = packed.attrs["in_features"], packed.attrs["atoms"]
    sparse = np.zeros((atoms, k), dtype=np.float32)
    cols = np.repeat(np.arange(k), packed.attrs["nonzeros"])
    np.add.at(sparse, (a["atom_idx"].reshape(-1).astype(np.int64), cols), a["values"].reshape(-1).astype(np.float32))
    return (a["dictionary"].astype(np.float32) @ sparse).astype(np.float32)


# ------------------------------------------------------------------------------------ group_sparse
def pack_group_sparse(weight: np.ndarray, *, group: int, keep: np.ndarray) -> PackedWeight:
    """keep: bool [N, ceil(K / group)] with the same number of True per row."""
    weight = _check_weight(weight)
    n, k = weight.shape
    kp = padded_length(k, group)
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (n, kp // group):
        raise ValueError(f"keep must be [{n}, {kp // group}], got {keep.shape}")
    per_row = keep.sum(1)
    if np.any(per_row != per_row[0]):
        raise ValueError("group_sparse is row-balanced: every row must keep the same number of groups")
    padded = np.zeros((n, kp), dtype=np.float32)
    padded[:, :k] = weight
    idx = np.nonzero(keep)[1].reshape(n, -1)
    values = np.take_along_axis(padded.reshape(n, kp // group, group), idx[:, :, None], axis=1).reshape(n, -1)
    return PackedWeight("group_sparse", {"values": values.astype(np.float16), "group_idx": idx.astype(np.uint16)},
                        {"in_features": k, "group": group, "kept": int(per_row[0]) if n else 0}, n)


def unpack_group_sparse(packed: PackedWeight) -> np.ndarray:
    k, g = packed.attrs["in_features"], packed.attrs["group"]
    n = packed.out_features
    kp = padded_length(k, g)
    idx = packed.arrays["group_idx"].astype(np.int64)
    dense = np.zeros((n, kp // g, g), dtype=np.float32)
    np.put_along_axis(dense, idx[:, :, None], packed.arrays["values"].astype(np.float32).reshape(n, -1, g), axis=1)
    return dense.reshape(n, kp)[:, :k]


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
register(FormatSpec(name="binary_split", summary="BiLLM-style: salient residual 1-bit + two-magnitude split",
                    array_names=("salient_idx", "bits", "residual_bits", "split_bits", "scales"),
                    attr_names=("in_features", "block_size", "salient"),
                    pack=pack_binary_split, unpack=unpack_binary_split))
register(FormatSpec(name="haar_binary", summary="HBVLA-style: salient residual 1-bit + Haar-domain group 1-bit",
                    array_names=("salient_idx", "salient_bits", "salient_residual_bits", "salient_scales", "bits",
                                 "scale_codes", "scale_base"),
                    attr_names=("in_features", "salient", "group_size"),
                    pack=pack_haar_binary, unpack=unpack_haar_binary, matmul_ref=haar_binary_matmul_ref))
register(FormatSpec(name="dense_sparse", summary="W = D S: float16 dictionary x column-sparse codes",
                    array_names=("dictionary", "values", "atom_idx"), attr_names=("in_features", "atoms", "nonzeros"),
                    pack=pack_dense_sparse, unpack=unpack_dense_sparse))
register(FormatSpec(name="group_sparse", summary="row-balanced sparsity in groups of g consecutive inputs",
                    array_names=("values", "group_idx"), attr_names=("in_features", "group", "kept"),
                    pack=pack_group_sparse, unpack=unpack_group_sparse))


def get_format(name: str) -> FormatSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown packed format {name!r}; known formats: {sorted(REGISTRY)}") from None


def unpack(packed: PackedWeight) -> np.ndarray:
    """The dense float32 [N, K] weight of any packed weight (its format's reference decoding)."""
    return get_format(packed.format).unpack(packed)


def out_features_of(name: str, arrays) -> int:
    """N, read off a format's arrays (numpy or torch): the leading dimension of the per-row array."""
    spec = get_format(name)
    per_row = "dictionary" if name == "dense_sparse" else next(a for a in spec.array_names if a in ("bits", "values"))
    return int(dict(zip(spec.array_names, arrays) if not isinstance(arrays, dict) else arrays)[per_row].shape[0])


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
    if packed.format == "binary_split":
        kp, s = padded_length(a["in_features"], a["block_size"]), a["salient"]
        return {"salient_idx": (s,), "bits": (rows, kp // 8), "residual_bits": (rows, -(-s // 8)),
                "split_bits": (rows, kp // 8), "scales": (rows, kp // a["block_size"], 4)}
    if packed.format == "haar_binary":
        kh, s = haar_padded_length(a["in_features"] - a["salient"]), a["salient"]
        return {"salient_idx": (s,), "salient_bits": (s, -(-rows // 8)), "salient_residual_bits": (s, -(-rows // 8)),
                "salient_scales": (2, s), "bits": (rows, kh // 8), "scale_codes": (rows, kh // a["group_size"]),
                "scale_base": (1,)}
    if packed.format == "dense_sparse":
        return {"dictionary": (rows, a["atoms"]), "values": (a["in_features"], a["nonzeros"]),
                "atom_idx": (a["in_features"], a["nonzeros"])}
    if packed.format == "group_sparse":
        return {"values": (rows, a["kept"] * a["group"]), "group_idx": (rows, a["kept"])}
    raise KeyError(packed.format)
