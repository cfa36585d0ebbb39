"""Backend-ops harness for the kernels_arm C kernels: every kernel x format x shape x architecture against
the numpy reference in edgevla.runtime.formats: x86_64 natively (and under AddressSanitizer), aarch64 and
armv7 under qemu, wasm32 in wasmtime and in node. Bad arguments are refused at the C boundary with an error code, never read out of bounds."""

from __future__ import annotations

import numpy as np
import pytest

from edgevla.runtime import formats
from edgevla.targets import ckernels

# Named tolerances. fp32 kernels reorder float32 sums; int8 kernels add per-row quantization (absmax / 127),
# bounded exactly: |y_int8 - y| <= (s / 2) * sum_k |W[j, k]| with s = max|x_row| / 127.
FP32 = {"rtol": 1e-4, "atol": 1e-4}
INT8_VS_ITS_REFERENCE = {"rtol": 1e-5, "atol": 1e-5}
# a value whose float32 Haar transform lands within an ulp of a rounding boundary may quantize one step apart
INT8_HAAR = {"rtol": 2e-3, "atol": 2e-2}

CASES = [  # kernel, format options, (N, K)
    ("b1f32", {"group_size": 64}, (7, 40)), ("b1f32", {"group_size": 64}, (33, 200)),
    ("b1f32", {"group_size": 8}, (5, 13)), ("b1f32", {"group_size": 128}, (64, 512)),
    ("b1i8", {"group_size": 64}, (7, 40)), ("b1i8", {"group_size": 64}, (33, 256)),
    ("b1i8", {"group_size": 8}, (5, 13)), ("b1i8", {"group_size": 32}, (16, 100)),
    ("bxb", {"group_size": 64}, (7, 40)), ("bxb", {"group_size": 64}, (33, 700)),
    ("bxb", {"group_size": 64}, (16, 1024)), ("bxb", {"group_size": 32}, (5, 77)),
    ("nm", {"n": 2, "m": 4}, (7, 40)), ("nm", {"n": 2, "m": 4}, (33, 203)), ("nm", {"n": 2, "m": 4}, (16, 512)),
    ("nm", {"n": 1, "m": 4}, (9, 70)), ("nm", {"n": 1, "m": 4}, (17, 333)), ("nm", {"n": 4, "m": 8}, (12, 96)),
    ("gs", {"group": 4, "kept": 5}, (7, 40)), ("gs", {"group": 8, "kept": 9}, (33, 203)),
    ("gs", {"group": 16, "kept": 3}, (16, 64)), ("gs", {"group": 3, "kept": 4}, (5, 22)),
    ("haar", {"salient": 3, "group_size": 16}, (7, 40)), ("haar", {"salient": 0, "group_size": 32}, (9, 64)),
    ("haar", {"salient": 10, "group_size": 16}, (33, 203)), ("haar", {"salient": 5, "group_size": 8}, (16, 6)),
    ("haar", {"salient": 20, "group_size": 64}, (24, 532)),
    ("haari8", {"salient": 3, "group_size": 16}, (7, 40)), ("haari8", {"salient": 0, "group_size": 32}, (19, 64)),
    ("haari8", {"salient": 10, "group_size": 16}, (33, 203)), ("haari8", {"salient": 20, "group_size": 64}, (24, 532)),
]
ROWS = [1, 3, 8, 16]


def random_haar(shape, salient, group_size, rng):
    """A haar_binary weight with random signs, log-scale codes (some 0) and salient columns."""
    n, k = shape
    idx = np.sort(rng.choice(k, size=salient, replace=False))
    kh = formats.haar_padded_length(k - salient)
    codes = rng.integers(0, 256, size=(n, kh // group_size)).astype(np.uint8)
    return formats.pack_haar_binary(
        haar_signs=rng.random((n, kh)) < 0.5, scale_codes=codes, scale_base=float(rng.uniform(0.05, 0.5)),
        salient_idx=idx, salient_signs=rng.random((n, salient)) < 0.5,
        salient_residual_signs=rng.random((n, salient)) < 0.5,
        salient_scales=rng.uniform(0.1, 1.0, size=(2, salient)).astype(np.float32), in_features=k,
        group_size=group_size)


def pack(kernel, options, shape, seed=0):
    rng = np.random.default_rng(seed)
    if kernel in ("haar", "haari8"):
        return random_haar(shape, options["salient"], options["group_size"], rng)
    w = rng.normal(size=shape).astype(np.float32)
    if kernel == "gs":
        groups = -(-shape[1] // options["group"])
        keep = np.zeros((shape[0], groups), bool)
        for row in keep:
            row[rng.choice(groups, size=options["kept"], replace=False)] = True
        return formats.pack_group_sparse(w, group=options["group"], keep=keep)
    return formats.pack_nm(w, **options) if kernel == "nm" else formats.pack_binary(w, **options)


def check(kernel, x, packed, y, variant_y=None):
    if kernel == "bxb":  # integer counts, float scales: a reordered float sum
        np.testing.assert_allclose(y, ckernels.bxb_reference(x, packed), **FP32)
        return
    if kernel == "haari8":  # the int8 Haar-domain rows in numpy (the transform's float32 rounding aside)
        np.testing.assert_allclose(y, formats.haar_binary_matmul_i8_ref(x, packed), **INT8_HAAR)
        return
    expected = (formats.haar_binary_matmul_ref(x, packed) if kernel == "haar"
                else formats.get_format(packed.format).matmul_ref(x, packed))
    if kernel == "b1i8":
        step = np.abs(x).max(axis=1, keepdims=True) / 127.0
        bound = 0.5 * step * np.abs(formats.unpack(packed)).sum(axis=1)[None, :] * 1.001 + 1e-5
        assert np.all(np.abs(y - expected) <= bound), float(np.max(np.abs(y - expected) - bound))
        if variant_y is not None:
            np.testing.assert_allclose(variant_y, y, **INT8_VS_ITS_REFERENCE)
    else:
        np.testing.assert_allclose(y, expected, **FP32)


def _cpu_flags() -> set[str]:
    text = open("/proc/cpuinfo").read()
    return set(next(line for line in text.splitlines() if line.startswith("flags")).split(":")[1].split())


def expected_variants(where: str) -> list[tuple[int, str]]:
    """(level, variant name) pairs to run: the best variant, and on x86 also the AVX2 one."""
    if where != "x86_64":
        return [(0, ckernels.VARIANT[where])]
    avx512 = {"avx512f", "avx512bw", "avx512_vnni"} <= _cpu_flags()
    return [(0, "avx512" if avx512 else "avx2"), (2, "avx2")]


@pytest.mark.parametrize("where", sorted(ckernels.RUNNERS))
@pytest.mark.parametrize("kernel,options,shape", CASES)
def test_kernel_matches_reference(where, kernel, options, shape, tmp_path):
    packed = pack(kernel, options, shape)
    for rows in ROWS:
        x = np.random.default_rng(rows).normal(size=(rows, shape[1])).astype(np.float32)
        y_ref, ref_name = ckernels.run_case(where, kernel, x, packed, tmp_path, reference=1)
        assert ref_name == "ref"
        check(kernel, x, packed, y_ref)
        for level, expected in expected_variants(where):
            y, variant = ckernels.run_case(where, kernel, x, packed, tmp_path, reference=level)
            assert variant == expected
            if kernel == "b1i8":
                check(kernel, x, packed, y_ref, variant_y=y)
            else:
                check(kernel, x, packed, y)


@pytest.mark.parametrize("kernel,options,shape", CASES[::2])
def test_kernels_under_address_sanitizer(kernel, options, shape, tmp_path):
    packed = pack(kernel, options, shape, seed=3)
    for rows in (1, 5, 16):
        x = np.random.default_rng(rows).normal(size=(rows, shape[1])).astype(np.float32)
        for level in (0, 1, 2):  # best (AVX-512 where present), reference, AVX2
            y, _ = ckernels.run_case("x86_64", kernel, x, packed, tmp_path, reference=level, sanitize=True)
            check(kernel, x, packed, y)


def test_bad_arguments_are_refused_at_the_c_boundary():
    import ctypes

    native = ckernels.NativeKernels()
    packed = pack("b1f32", {"group_size": 64}, (8, 100))
    x = np.ones((2, 100), np.float32)
    native.call("b1f32", x, packed)  # fine
    lib = native.lib
    matrix = ckernels._B1Matrix(packed.arrays["bits"].ctypes.data, packed.arrays["scales"].ctypes.data, 8, 100, 64)
    y = np.zeros((2, 8), np.float32)
    good = ckernels._Lengths(200, packed.arrays["bits"].size, packed.arrays["scales"].size, 16)
    call = lambda xp, rows, m, yp, lens: lib.evla_b1_gemm_f32(xp, rows, m, yp, lens)  # noqa: E731
    assert call(x.ctypes.data, 2, ctypes.byref(matrix), y.ctypes.data, ctypes.byref(good)) == 0
    assert call(None, 2, ctypes.byref(matrix), y.ctypes.data, ctypes.byref(good)) == -1      # NULL x
    assert call(x.ctypes.data, 0, ctypes.byref(matrix), y.ctypes.data, ctypes.byref(good)) == -2  # rows
    assert call(x.ctypes.data, 17, ctypes.byref(matrix), y.ctypes.data, ctypes.byref(good)) == -2
    short = ckernels._Lengths(200, packed.arrays["bits"].size - 1, packed.arrays["scales"].size, 16)
    assert call(x.ctypes.data, 2, ctypes.byref(matrix), y.ctypes.data, ctypes.byref(short)) == -4  # padding rule
    bad_group = ckernels._B1Matrix(packed.arrays["bits"].ctypes.data, packed.arrays["scales"].ctypes.data, 8, 100, 12)
    assert call(x.ctypes.data, 2, ctypes.byref(bad_group), y.ctypes.data, ctypes.byref(good)) == -3
    y[:] = 7.0
    assert call(x.ctypes.data, 2, ctypes.byref(matrix), y.ctypes.data, ctypes.byref(short)) == -4
    assert np.all(y == 7.0)  # a refused call writes nothing
    with pytest.raises(ValueError, match="refused its arguments: status -2"):
        native.call("b1f32", np.ones((17, 100), np.float32), packed)


def test_wrong_lengths_under_asan_are_refused_not_read(tmp_path):
    """The runner derives lengths from the files: a truncated weight file must be refused (status -4)."""
    packed = pack("nm", {"n": 2, "m": 4}, (8, 64))
    short = formats.PackedWeight("nm", {"values": packed.arrays["values"][:, :-1].copy(),
                                        "indices": packed.arrays["indices"]}, packed.attrs, packed.out_features)
    with pytest.raises(RuntimeError, match=r"failed \(1\): \w+ -4"):
        ckernels.run_case("x86_64", "nm", np.ones((1, 64), np.float32), short, tmp_path, sanitize=True)


def test_corrupt_stored_indices_are_refused_before_any_read(tmp_path):
    """Indices inside the packed arrays are data too: a group index past the matrix or a salient column past
    K (or out of order) would make the kernel read outside the activations. They are checked first (-5) and
    the output is left as it was; under AddressSanitizer no out-of-bounds read happens either."""
    native = ckernels.NativeKernels()
    rng = np.random.default_rng(5)
    gs = pack("gs", {"group": 4, "kept": 3}, (6, 40))
    haar = pack("haar", {"salient": 4, "group_size": 16}, (6, 40))
    x = rng.normal(size=(2, 40)).astype(np.float32)
    bad_gs = [gs.arrays["group_idx"].copy() for _ in range(2)]
    bad_gs[0][2, 1] = 10  # groups are 0..9
    bad_gs[1][3, :] = bad_gs[1][3, ::-1].copy()  # descending
    bad_salient = [haar.arrays["salient_idx"].copy() for _ in range(2)]
    bad_salient[0][-1] = 40
    bad_salient[1][:2] = bad_salient[1][1::-1].copy()
    cases = [("gs", formats.PackedWeight("group_sparse", {**gs.arrays, "group_idx": g}, gs.attrs, 6)) for g in bad_gs]
    cases += [("haar", formats.PackedWeight("haar_binary", {**haar.arrays, "salient_idx": s}, haar.attrs, 6))
              for s in bad_salient]
    for kernel, packed in cases:
        y = np.full((2, 6), 7.0, np.float32)
        with pytest.raises(ValueError, match="status -5"):
            native.call(kernel, x, packed, y)
        assert np.all(y == 7.0)
        with pytest.raises(RuntimeError, match=r"failed \(1\): \w+ -5"):
            ckernels.run_case("x86_64", kernel, x, packed, tmp_path, sanitize=True)
    native.call("gs", x, gs)  # the intact weights are fine
    np.testing.assert_allclose(native.call("haar", x, haar), formats.haar_binary_matmul_ref(x, haar), **FP32)
