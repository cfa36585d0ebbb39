"""edgevla.runtime.formats: the packed layouts and their numpy references."""

import numpy as np
import pytest

from edgevla.runtime import formats


def test_registry_lists_known_formats_on_unknown_name():
    assert {"binary", "nm"} <= set(formats.REGISTRY)
    with pytest.raises(KeyError, match="known formats"):
        formats.get_format("ternary")


@pytest.mark.parametrize("k,group", [(64, 64), (70, 64), (13, 8), (160, 80), (1, 8)])
def test_binary_round_trip_and_padding(k, group):
    rng = np.random.default_rng(k)
    w = rng.normal(size=(6, k)).astype(np.float32)
    packed = formats.pack_binary(w, group_size=group)
    kp = formats.padded_length(k, group)
    assert packed.arrays["bits"].shape == (6, kp // 8) and packed.arrays["bits"].dtype == np.uint8
    assert packed.arrays["scales"].shape == (6, kp // group) and packed.arrays["scales"].dtype == np.float16
    dense = formats.unpack_binary(packed)
    assert dense.shape == (6, k)
    np.testing.assert_array_equal(np.sign(dense), np.where(w >= 0, 1.0, -1.0))
    # every group's scale is the mean |w| of its real (unpadded) weights
    for g in range(kp // group):
        cols = slice(g * group, min((g + 1) * group, k))
        np.testing.assert_allclose(np.abs(dense[:, cols]).mean(axis=1), np.abs(w[:, cols]).mean(axis=1), rtol=1e-3)
    # padding bits are zero
    bits = np.unpackbits(packed.arrays["bits"], axis=1, bitorder="little")
    assert not bits[:, k:].any()
    assert packed.bits_per_weight == pytest.approx((kp + 16 * kp / group) / k)


def test_binary_matmul_ref_matches_dense():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(9, 70)).astype(np.float32)
    packed = formats.pack_binary(w, group_size=64)
    x = rng.normal(size=(2, 3, 70)).astype(np.float32)
    y = formats.get_format("binary").matmul_ref(x, packed)
    np.testing.assert_allclose(y, x @ formats.unpack_binary(packed).T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expects 70"):
        formats.get_format("binary").matmul_ref(x[..., :69], packed)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("k", [16, 18, 7])
def test_nm_round_trip(n, m, k):
    rng = np.random.default_rng(k + m)
    w = rng.normal(size=(5, k)).astype(np.float32)
    w[0, :3] = 0.0  # ties
    packed = formats.pack_nm(w, n=n, m=m)
    # Independent reference: per group, the n largest |w| with ties to the lower index, in plain Python.
    expected = np.zeros_like(w)
    for r in range(5):
        for start in range(0, k, m):
            cols = list(range(start, min(start + m, k)))
            padded = [(abs(float(w[r, c])), c) for c in cols] + [(0.0, 10**9 + j) for j in range(m - len(cols))]
            for _, c in sorted(padded, key=lambda t: (-t[0], t[1]))[:n]:
                if c < k:
                    expected[r, c] = np.float16(w[r, c])
    np.testing.assert_array_equal(formats.unpack_nm(packed), expected)
    assert {k_: v.shape for k_, v in packed.arrays.items()} == formats.expected_shapes(packed)
    assert packed.bits_per_weight == pytest.approx(
        8 * (packed.arrays["values"].nbytes + packed.arrays["indices"].nbytes) / (5 * k))


def test_nm_with_mask_keeps_exactly_the_mask():
    w = np.arange(1, 17, dtype=np.float32).reshape(2, 8)
    mask = np.zeros_like(w, dtype=bool)
    mask[:, [0, 3, 5]] = True  # group 0 keeps 2 (0, 3), group 1 keeps 1 (5): one zero slot added
    dense = formats.unpack_nm(formats.pack_nm(w, n=2, m=4, mask=mask))
    np.testing.assert_array_equal(dense, np.where(mask, w, 0))
    with pytest.raises(ValueError, match="more than 2 of 4"):
        formats.pack_nm(w, n=2, m=4, mask=np.ones_like(mask))


def test_bad_weights_are_refused_with_position():
    w = np.zeros((3, 8), np.float32)
    w[1, 5] = np.nan
    with pytest.raises(ValueError, match="row 1, column 5"):
        formats.pack_binary(w)
    with pytest.raises(ValueError, match="multiple of 8"):
        formats.pack_binary(np.zeros((2, 8), np.float32), group_size=12)
    with pytest.raises(ValueError, match="matrix"):
        formats.pack_nm(np.zeros(8, np.float32))


def test_packed_from_arrays_checks_shapes():
    packed = formats.pack_binary(np.ones((4, 16), np.float32), group_size=8)
    again = formats.packed_from_arrays("binary", packed.arrays, packed.attrs, 4)
    np.testing.assert_array_equal(formats.unpack_binary(again), formats.unpack_binary(packed))
    bad = dict(packed.arrays, bits=packed.arrays["bits"][:, :1])
    with pytest.raises(ValueError, match="expected shape"):
        formats.packed_from_arrays("binary", bad, packed.attrs, 4)


def test_public_names_resolve():
    import edgevla
    import edgevla.formats

    assert edgevla.formats.get_format is formats.get_format
    assert callable(edgevla.compress) and callable(edgevla.export) and callable(edgevla.compile)
    assert callable(edgevla.load)
