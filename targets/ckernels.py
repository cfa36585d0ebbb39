"""Build and load the kernels_arm C kernels: native shared library (ctypes) and per-arch test runners.

Architectures: x86_64 (gcc; the AVX2 file is compiled with -mavx2 -mfma -mf16c and chosen at run time by
CPU features, never -march=native), aarch64 and armv7 (GNU cross compilers, static, run under qemu-aarch64 /
qemu-arm), wasm32 (zig cc for wasm32-wasi with SIMD128, run in wasmtime and in node).
Builds are cached by a hash of the sources and flags under EDGEVLA_CACHE/kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevla.runtime import formats

ROOT = Path(__file__).resolve().parents[1] / "kernels_arm"
INCLUDE = ROOT / "include"
COMMON = ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}"]


@dataclass(frozen=True)
class Arch:
    name: str
    compiler: tuple[str, ...]
    sources: tuple[tuple[str, tuple[str, ...]], ...]  # (source, extra flags)
    link: tuple[str, ...]
    runner: tuple[str, ...]  # how to execute a binary for this arch here (prefix; "wasm" for the wasi runners)


ZIG_CC = (sys.executable, "-m", "ziglang", "cc")
AVX512_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vnni", "-mavx512dq", "-mavx512vpopcntdq", "-mavx512vl", "-mfma",
                "-DEVLA_WITH_AVX2")
ARCHES = {
    "x86_64": Arch("x86_64", ("gcc",),
                   (("src/ref/kernels_ref.c", ("-DEVLA_WITH_AVX2",)),
                    ("src/x86/kernels_avx2.c", ("-mavx2", "-mfma", "-mf16c", "-DEVLA_WITH_AVX2")),
                    ("src/x86/kernels_avx512.c", AVX512_FLAGS),
                    ("src/x86/kernels_avx512_tiles.c", AVX512_FLAGS),
                    ("src/dispatch.c", ("-DEVLA_WITH_AVX2",))), ("-lm",), ()),
    "aarch64": Arch("aarch64", ("aarch64-linux-gnu-gcc",),
                    (("src/ref/kernels_ref.c", ()), ("src/arm/kernels_neon.c", ("-march=armv8-a",)),
                     ("src/arm/kernels_neon_dotprod.c", ("-march=armv8.2-a+dotprod",)),
                     ("src/dispatch.c", ())), ("-static", "-lm"), ("qemu-aarch64",)),
    "armv7": Arch("armv7", ("arm-linux-gnueabihf-gcc", "-march=armv7-a", "-mfpu=neon", "-mfloat-abi=hard"),
                  (("src/ref/kernels_ref.c", ()), ("src/arm/kernels_neon.c", ()), ("src/dispatch.c", ())),
                  ("-static", "-lm"), ("qemu-arm",)),
    "wasm32": Arch("wasm32", (*ZIG_CC, "--target=wasm32-wasi", "-msimd128"),
                   (("src/ref/kernels_ref.c", ()), ("src/wasm/kernels_simd128.c", ()), ("src/dispatch.c", ())),
                   ("-lm",), ("wasm",)),
}
RUNNERS = {"x86_64": "x86_64", "aarch64": "aarch64", "aarch64-nodotprod": "aarch64", "armv7": "armv7",
           "wasm32-wasmtime": "wasm32", "wasm32-node": "wasm32"}  # where a case can run here -> the build it uses
# Runners whose command differs from their arch's: the emulated CPU decides which variant the dispatcher picks
# (qemu's "max" CPU has the dot-product extension; a Cortex-A72 has plain Armv8.0 NEON).
RUNNER_PREFIX = {"aarch64": ("qemu-aarch64", "-cpu", "max"),
                 "aarch64-nodotprod": ("qemu-aarch64", "-cpu", "cortex-a72")}
VARIANT = {"x86_64": "avx2", "aarch64": "neon+dotprod", "aarch64-nodotprod": "neon", "armv7": "neon",
           "wasm32-wasmtime": "simd128", "wasm32-node": "simd128"}  # best variant each runner reports
# Packed arrays each kernel reads, in the runner's argument order, and its two integer parameters.
KERNEL_ARRAYS = {
    "b1f32": ("bits", "scales"), "b1i8": ("bits", "scales"), "bxb": ("bits", "scales"),
    "nm": ("values", "indices"), "gs": ("values", "group_idx"),
    "haar": ("salient_idx", "salient_bits", "salient_residual_bits", "salient_scales", "bits", "scale_codes",
             "scale_base"),
}
KERNEL_ARRAYS["haari8"] = KERNEL_ARRAYS["haar"]  # haar_binary with the Haar-domain activations in int8
KERNEL_PARAMS = {"b1f32": ("group_size", None), "b1i8": ("group_size", None), "bxb": ("group_size", None),
                 "nm": ("n", "m"), "gs": ("group", "kept"), "haar": ("salient", "group_size"),
                 "haari8": ("salient", "group_size")}


def _cache(key: str) -> Path:
    home = Path(os.environ.get("EDGEVLA_CACHE", Path.home() / ".cache" / "edgevla")) / "kernels" / key
    home.mkdir(parents=True, exist_ok=True)
    return home


def _digest(arch: Arch, extra: tuple[str, ...]) -> str:
    h = hashlib.sha256(repr((arch, extra, COMMON)).encode())
    for path in sorted(ROOT.rglob("*.[ch]")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _compile(arch: Arch, extra: tuple[str, ...], out: Path, *, shared: bool, main: str | None = None) -> Path:
    if arch.compiler[0] != sys.executable and shutil.which(arch.compiler[0]) is None:
        raise RuntimeError(f"{arch.compiler[0]} is not installed: run scripts/setup.sh as root (it installs the "
                           f"cross compilers) to build the {arch.name} kernels")
    objects = []
    for source, flags in arch.sources + ((main, ()),) * (main is not None):
        obj = out.with_name(out.name + "." + Path(source).stem + ".o")
        subprocess.run([*arch.compiler, *COMMON, *flags, *extra, *(("-fPIC",) if shared else ()), "-c",
                        str(ROOT / source), "-o", str(obj)], check=True, capture_output=True, text=True)
        objects.append(str(obj))
    subprocess.run([*arch.compiler, *extra, *(("-shared",) if shared else ()), *objects, "-o", str(out),
                    *(a for a in arch.link if not (shared and a == "-static"))], check=True, capture_output=True,
                   text=True)
    return out


def build_runner(arch_name: str, *, sanitize: bool = False) -> tuple[Path, tuple[str, ...]]:
    """(file-driven runner executable, command prefix to run it here)."""
    arch = ARCHES[arch_name]
    extra = ("-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g") if sanitize else ()
    if sanitize:
        arch = Arch(arch.name, arch.compiler, arch.sources, tuple(a for a in arch.link if a != "-static"), arch.runner)
    exe = _cache(_digest(arch, extra)) / f"kernel_runner-{arch_name}{'-asan' if sanitize else ''}"
    if not exe.exists():
        try:
            _compile(arch, extra, exe, shared=False, main="tools/kernel_runner.c")
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"building the {arch_name} kernels failed: {e.stderr[-2000:]}") from e
    return exe, arch.runner


def link_objects(arch_name: str) -> list[Path]:
    """Position-independent objects of the kernels for `arch_name`, to link into a TVM library (addons)."""
    arch = ARCHES[arch_name]
    home = _cache(_digest(arch, ("objects",)))
    objects = []
    for source, flags in arch.sources:
        obj = home / (Path(source).stem + ".o")
        if not obj.exists():
            try:
                subprocess.run([*arch.compiler, *COMMON, *flags, "-fPIC", "-c", str(ROOT / source), "-o", str(obj)],
                               check=True, capture_output=True, text=True)
            except subprocess.CalledProcessError as e:
                raise RuntimeError(f"building the {arch_name} kernels failed: {e.stderr[-2000:]}") from e
        objects.append(obj)
    return objects


@dataclass(frozen=True)
class DenseLibrary:
    """A well-kept library behind kernels_arm/include/edgevla/dense.h for one architecture."""
    name: str
    source: str                 # our binding, under kernels_arm/
    header: str                 # the library's header the binding includes (checked before building)
    link: tuple[str, ...]       # how the bundle library links it (a shared library the device must have)
    debian: str                 # the Debian package with the header and the library (what a robot installs)


DENSE_LIBRARIES = {
    "x86_64": DenseLibrary("onednn", "src/lib/dense_onednn.c", "oneapi/dnnl/dnnl.h", ("-Wl,--no-as-needed", "-ldnnl", "-lgomp"),
                           "libdnnl-dev (robot: libdnnl2)"),
}


def dense_library_objects(arch_name: str) -> tuple[list[Path], list[str]]:
    """(objects of the dense-op binding for `arch_name`, linker options for the library it calls)."""
    library = DENSE_LIBRARIES[arch_name]
    arch = ARCHES[arch_name]
    if not any((Path(d) / library.header).is_file() for d in ("/usr/include", "/usr/local/include")):
        raise RuntimeError(f"the {library.name} headers ({library.header}) are not installed: run scripts/setup.sh as "
                           f"root (Debian package {library.debian}), or compile with dense='tvm'")
    obj = _cache(_digest(arch, ("dense", library.source))) / (Path(library.source).stem + ".o")
    if not obj.exists():
        try:
            subprocess.run([*arch.compiler, *COMMON, "-fPIC", "-c", str(ROOT / library.source), "-o", str(obj)],
                           check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"building the {library.name} binding failed: {e.stderr[-2000:]}") from e
    return [obj], list(library.link)


class NativeKernels:
    """The x86_64 shared library through ctypes (pointers converted per call; fine for benchmarks of ms)."""

    def __init__(self):
        arch = ARCHES["x86_64"]
        path = _cache(_digest(arch, ("shared",))) / "libedgevla_kernels.so"
        if not path.exists():
            _compile(arch, (), path, shared=True)
        self.lib = ctypes.CDLL(str(path))
        self.lib.evla_kernel_variant.restype = ctypes.c_char_p
        for name, matrix in (("evla_b1_gemm_f32", _B1Matrix), ("evla_b1_gemm_i8", _B1Matrix),
                             ("evla_nm_gemm_f32", _NmMatrix)):
            function = getattr(self.lib, name)
            function.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(matrix), ctypes.c_void_p,
                                 ctypes.POINTER(_Lengths)]
            function.restype = ctypes.c_int
        self.lib.evla_bxb_gemm.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32,
                                           ctypes.POINTER(_B1Matrix), ctypes.c_void_p, ctypes.POINTER(_Lengths)]
        self.lib.evla_bxb_gemm.restype = ctypes.c_int
        self.lib.evla_gs_gemm_f32.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(_GsMatrix),
                                              ctypes.c_void_p, ctypes.POINTER(_Lengths)]
        self.lib.evla_gs_gemm_f32.restype = ctypes.c_int
        self.lib.evla_haar_gemm_f32.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(_HaarMatrix),
                                                ctypes.c_void_p, ctypes.POINTER(_HaarLengths)]
        self.lib.evla_haar_gemm_f32.restype = ctypes.c_int

    @property
    def variant(self) -> str:
        return self.lib.evla_kernel_variant().decode()

    def force_level(self, level: int) -> None:
        """0: best variant; 1: portable reference; 2: at most AVX2."""
        self.lib.evla_force_reference(int(level))

    def call(self, kernel: str, x: np.ndarray, packed: formats.PackedWeight, y: np.ndarray | None = None, *,
             x_binary: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """kernel: b1f32 | b1i8 | nm | gs | haar | bxb (pass `x_binary` = binarize_activations(x, group) for
        bxb). The formats: binary for b1f32/b1i8/bxb, nm, group_sparse for gs, haar_binary for haar."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, k = x.shape
        n = packed.out_features
        y = np.empty((rows, n), np.float32) if y is None else y
        ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
        if kernel == "bxb":  # x: (signs uint8 [rows, Kp/8], scales float32 [rows]) from binarize_activations
            signs, scales = x_binary
            a, b = packed.arrays["bits"], packed.arrays["scales"]
            matrix = _B1Matrix(ptr(a), ptr(b), n, k, packed.attrs["group_size"])
            lengths = _Lengths(signs.size, a.size, b.size, y.size)
            status = self.lib.evla_bxb_gemm(ptr(signs), ptr(scales), rows, ctypes.byref(matrix), ptr(y),
                                            ctypes.byref(lengths))
        elif kernel == "gs":
            a, b = packed.arrays["values"], packed.arrays["group_idx"]
            matrix = _GsMatrix(ptr(a), ptr(b), n, k, packed.attrs["group"], packed.attrs["kept"])
            lengths = _Lengths(x.size, a.size, b.size, y.size)
            status = self.lib.evla_gs_gemm_f32(ptr(x), rows, ctypes.byref(matrix), ptr(y), ctypes.byref(lengths))
        elif kernel == "haar":
            arrays = [packed.arrays[name] for name in KERNEL_ARRAYS["haar"][:6]]
            matrix = _HaarMatrix(*(ptr(a) for a in arrays), float(packed.arrays["scale_base"][0]), n, k,
                                 packed.attrs["salient"], packed.attrs["group_size"])
            lengths = _HaarLengths(x.size, y.size, *(a.size for a in arrays))
            status = self.lib.evla_haar_gemm_f32(ptr(x), rows, ctypes.byref(matrix), ptr(y), ctypes.byref(lengths))
        elif kernel == "nm":
            a, b = packed.arrays["values"], packed.arrays["indices"]
            matrix = _NmMatrix(ptr(a), ptr(b), n, k, packed.attrs["n"], packed.attrs["m"])
            lengths = _Lengths(x.size, a.size, b.size, y.size)
            status = self.lib.evla_nm_gemm_f32(ptr(x), rows, ctypes.byref(matrix), ptr(y), ctypes.byref(lengths))
        else:
            a, b = packed.arrays["bits"], packed.arrays["scales"]
            matrix = _B1Matrix(ptr(a), ptr(b), n, k, packed.attrs["group_size"])
            lengths = _Lengths(x.size, a.size, b.size, y.size)
            function = self.lib.evla_b1_gemm_i8 if kernel == "b1i8" else self.lib.evla_b1_gemm_f32
            status = function(ptr(x), rows, ctypes.byref(matrix), ptr(y), ctypes.byref(lengths))
        if status != 0:
            raise ValueError(f"kernel {kernel} refused its arguments: status {status}")
        return y


class _B1Matrix(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_void_p), ("scales", ctypes.c_void_p), ("out_features", ctypes.c_int32),
                ("in_features", ctypes.c_int32), ("group_size", ctypes.c_int32)]


class _NmMatrix(ctypes.Structure):
    _fields_ = [("values", ctypes.c_void_p), ("indices", ctypes.c_void_p), ("out_features", ctypes.c_int32),
                ("in_features", ctypes.c_int32), ("n", ctypes.c_int32), ("m", ctypes.c_int32)]


class _GsMatrix(ctypes.Structure):
    _fields_ = [("values", ctypes.c_void_p), ("group_idx", ctypes.c_void_p), ("out_features", ctypes.c_int32),
                ("in_features", ctypes.c_int32), ("group", ctypes.c_int32), ("kept", ctypes.c_int32)]


class _HaarMatrix(ctypes.Structure):
    _fields_ = [*((name, ctypes.c_void_p) for name in KERNEL_ARRAYS["haar"][:6]), ("scale_base", ctypes.c_float),
                ("out_features", ctypes.c_int32), ("in_features", ctypes.c_int32), ("salient", ctypes.c_int32),
                ("group_size", ctypes.c_int32)]


class _HaarLengths(ctypes.Structure):
    _fields_ = [("x", ctypes.c_size_t), ("y", ctypes.c_size_t),
                *((name, ctypes.c_size_t) for name in KERNEL_ARRAYS["haar"][:6])]


class _Lengths(ctypes.Structure):
    _fields_ = [("x", ctypes.c_size_t), ("packed_a", ctypes.c_size_t), ("packed_b", ctypes.c_size_t),
                ("y", ctypes.c_size_t)]


def binarize_activations(x: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Activation signs in the binary weight layout ([rows, Kp/8], bit 1 = x >= 0, padding 0) and per-row
    scales mean|x|: the input of evla_bxb_gemm."""
    rows, k = x.shape
    kp = formats.padded_length(k, group_size)
    signs = np.zeros((rows, kp), bool)
    signs[:, :k] = x >= 0
    return np.packbits(signs, axis=1, bitorder="little"), np.abs(x).mean(axis=1).astype(np.float32)


def bxb_reference(x: np.ndarray, packed: formats.PackedWeight) -> np.ndarray:
    """What evla_bxb_gemm computes, in numpy: mean|x| * (sign(x) @ W.T), sign(0) = +1."""
    sign = np.where(x >= 0, 1.0, -1.0)
    return (np.abs(x).mean(axis=1, keepdims=True) * (sign @ formats.unpack(packed).astype(np.float64).T)).astype(
        np.float32)


def run_case(where: str, kernel: str, x: np.ndarray, packed: formats.PackedWeight, workdir: Path, *,
             reference: bool | int = False, sanitize: bool = False) -> tuple[np.ndarray, str]:
    """Run one kernel case through the file-driven runner `where` (see RUNNERS); (y, variant)."""
    arch_name = RUNNERS[where]
    exe, prefix = build_runner(arch_name, sanitize=sanitize)
    prefix = RUNNER_PREFIX.get(where, prefix)
    rows, k = x.shape
    params = [str(packed.attrs[name]) if name else "0" for name in KERNEL_PARAMS[kernel]]
    names = KERNEL_ARRAYS[kernel]
    files = ["x.bin", "y.bin"] + [f"{name}.bin" for name in names]
    if kernel == "bxb":
        signs, scales = binarize_activations(x, packed.attrs["group_size"])
        (workdir / files[0]).write_bytes(scales.tobytes() + np.ascontiguousarray(signs).tobytes())
    else:
        np.ascontiguousarray(x, np.float32).tofile(workdir / files[0])
    for f, name in zip(files[2:], names):
        np.ascontiguousarray(packed.arrays[name]).tofile(workdir / f)
    (workdir / files[1]).unlink(missing_ok=True)
    args = [kernel, str(rows), str(k), str(packed.out_features), *params, str(int(reference))]
    if prefix == ("wasm",):
        from .emulate import wasi

        run = wasi.run_wasmtime if where == "wasm32-wasmtime" else wasi.run_node
        code, stdout = run(exe, args + [f"{wasi.GUEST_DIR}/{f}" for f in files], workdir)
        stderr = ""
    else:
        result = subprocess.run([*prefix, str(exe), *args, *(str(workdir / f) for f in files)], capture_output=True,
                                text=True, timeout=300)
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    if code != 0:
        raise RuntimeError(f"{where} runner failed ({code}): {stdout} {stderr[-2000:]}")
    variant = stdout.split()[0]
    return np.fromfile(workdir / files[1], np.float32).reshape(rows, packed.out_features), variant
