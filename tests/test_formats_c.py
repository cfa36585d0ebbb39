"""The C header packs bit-identically to edgevla.runtime.formats (the definition)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgevla.runtime import formats

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def packer(tmp_path_factory) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is required (the README's test command installs gcc)"
    exe = tmp_path_factory.mktemp("c") / "pack_formats"
    subprocess.run([cc, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'kernels_arm/include'}",
                    str(ROOT / "kernels_arm/tools/pack_formats.c"), "-o", str(exe)], check=True)
    return exe


def c_pack(packer: Path, tmp_path: Path, weight: np.ndarray, kind: str, p1: int, p2: int = 0) -> bytes:
    src, dst = tmp_path / "w.f32", tmp_path / "out.bin"
    np.ascontiguousarray(weight, dtype="<f4").tofile(src)
    rows, k = weight.shape
    subprocess.run([str(packer), kind, str(rows), str(k), str(p1), str(p2), str(src), str(dst)], check=True)
    return dst.read_bytes()


def py_bytes(packed: formats.PackedWeight) -> bytes:
    spec = formats.get_format(packed.format)
    return b"".join(np.ascontiguousarray(packed.arrays[name]).tobytes() for name in spec.array_names)


SHAPES = [(1, 8), (3, 64), (5, 70), (4, 13), (7, 200), (16, 257)]


@pytest.mark.parametrize("rows,k", SHAPES)
@pytest.mark.parametrize("group", [8, 64, 128])
def test_binary_random(packer, tmp_path, rows, k, group):
    w = np.random.default_rng(rows * 1000 + k).normal(scale=0.05, size=(rows, k)).astype(np.float32)
    w[0, 0] = 0.0  # zero packs as +1
    assert c_pack(packer, tmp_path, w, "binary", group) == py_bytes(formats.pack_binary(w, group_size=group))


@pytest.mark.parametrize("k", [8, 24, 70])
def test_binary_one_hot_bit_order(packer, tmp_path, k):
    # Row i has a single non-negative weight at column i: bit i%8 of byte i//8 must be the only set bit.
    rows = k
    w = -np.ones((rows, k), dtype=np.float32)
    np.fill_diagonal(w, 1.0)
    packed = formats.pack_binary(w, group_size=8)
    for i in range(rows):
        expected = np.zeros(packed.arrays["bits"].shape[1], dtype=np.uint8)
        expected[i // 8] = 1 << (i % 8)
        np.testing.assert_array_equal(packed.arrays["bits"][i], expected)
    assert c_pack(packer, tmp_path, w, "binary", 8) == py_bytes(packed)


@pytest.mark.parametrize("rows,k", SHAPES)
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 16)])
def test_nm_random(packer, tmp_path, rows, k, n, m):
    w = np.random.default_rng(rows + k).normal(size=(rows, k)).astype(np.float32)
    w[:, ::5] = 0.0  # ties between zeros exercise the lower-index rule
    assert c_pack(packer, tmp_path, w, "nm", n, m) == py_bytes(formats.pack_nm(w, n=n, m=m))


@pytest.mark.parametrize("m", [4, 8])
def test_nm_one_hot_index_order(packer, tmp_path, m):
    # Row j keeps position j of each group first: its index field must read j.
    w = np.zeros((m, 2 * m), dtype=np.float32)
    for j in range(m):
        w[j, j] = 1.0
        w[j, m + j] = -2.0
    packed = formats.pack_nm(w, n=1, m=m)
    np.testing.assert_array_equal(formats.nm_unpack_indices(packed), np.repeat(np.arange(m)[:, None], 2, axis=1))
    assert c_pack(packer, tmp_path, w, "nm", 1, m) == py_bytes(packed)


def test_float16_rounding_matches_numpy(packer, tmp_path):
    # Scales cover the float16 corner cases: subnormals, ties, overflow to inf.
    values = np.array([6.1e-5, 5.96e-8, 2.98e-8, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 65504.0, 65519.0, 65520.0, 1e-9],
                      dtype=np.float32)
    w = np.repeat(values[:, None], 8, axis=1)
    assert c_pack(packer, tmp_path, w, "binary", 8) == py_bytes(formats.pack_binary(w, group_size=8))
