"""`jetson-orin`: NVIDIA Jetson AGX Orin (CUDA sm_87 kernels, aarch64 host code).

TVM compiles the model with its GPU schedules (dlight) for sm_87 and the host side for the Orin's
Cortex-A78AE; the library is linked by the aarch64 cross compiler and carries the kernels as CUDA source,
compiled at first load on the Jetson. The bundle also keeps that source (`device/kernels.cu`) so it can be
read and checked here: verification on a machine without a Jetson counts the GPU kernels and compiles the
source with nvcc for sm_87. On a machine with a CUDA GPU, scripts/gpu_check.py builds the same model for
that GPU, runs it and compares with onnxruntime.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import onnx

from edgevla.runtime.bundle import Bundle
from .base import BuildOptions, Target, VerifyReport, register_target
from .arm64 import CROSS_COMPILER

KERNEL_SOURCE = "device/kernels.cu"


def cuda_sources(executable) -> list[str]:
    """The CUDA source of every device module inside a compiled (not yet exported) executable."""
    found = []

    def walk(module):
        if module.kind == "cuda":
            found.append(module.inspect_source())
        for sub in module.imports_:
            walk(sub)

    walk(executable.mod)
    return found


def count_kernels(source: str) -> int:
    return len(re.findall(r'extern "C" __global__', source))


def nvcc_compiles(source_path: Path, arch: str = "sm_87") -> tuple[bool, str]:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return False, "nvcc is not installed (CUDA toolkit); it is needed to check the Jetson kernels here"
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([nvcc, f"-arch={arch}", "-c", str(source_path), "-o", str(Path(tmp) / "k.o")],
                                capture_output=True, text=True, timeout=600)
    return result.returncode == 0, result.stderr.strip()[-1500:]


class JetsonOrinTarget(Target):
    name = "jetson-orin"
    arch = "aarch64"
    device = "cuda"
    tag = "nvidia/jetson-agx-orin-64gb"
    description = "NVIDIA Jetson AGX Orin: CUDA sm_87 kernels, Cortex-A78AE host code"

    def tvm_target(self):
        return self.tag

    def build(self, model: onnx.ModelProto, out_dir: Path, options: BuildOptions) -> Path:
        # the packed kernels run on the GPU here: TIR kernels under dlight schedules, never the CPU C kernels
        from . import tvm_backend

        self.refuse_tuning(options.tuning, "its kernels already get dlight GPU schedules, and measuring them needs the "
                                   "Jetson's GPU (CPU tuning rules do not apply)")
        if shutil.which(CROSS_COMPILER) is None:
            raise RuntimeError(f"{CROSS_COMPILER} is not installed: run scripts/setup.sh as root (Debian package "
                               "g++-aarch64-linux-gnu) or put an aarch64 cross g++ on PATH")
        executable = tvm_backend.compile_module(tvm_backend.import_onnx(model), self.tag)
        sources = cuda_sources(executable)
        kernels = sum(count_kernels(s) for s in sources)
        if kernels == 0:
            raise RuntimeError("the CUDA build produced no GPU kernels: every operator would run on the host; "
                               "this is a TVM pipeline problem, not a usable Jetson bundle")
        source_path = Path(out_dir) / KERNEL_SOURCE
        source_path.parent.mkdir(parents=True, exist_ok=True)
        source_path.write_text("\n".join(sources))
        return tvm_backend.export_library(executable, Path(out_dir) / "model.so", cross_compiler=CROSS_COMPILER)

    def run_check(self, bundle, inputs):
        raise NotImplementedError("jetson-orin bundles run on a Jetson; here they are checked by verify()")

    def verify(self, bundle: Bundle) -> VerifyReport:
        source = bundle.path / KERNEL_SOURCE
        kernels = count_kernels(source.read_text())
        library = bundle.library.read_bytes()
        aarch64_host = library[:4] == b"\x7fELF" and int.from_bytes(library[18:20], "little") == 183
        compiled, log = nvcc_compiles(source)
        atol, rtol = bundle.tolerance
        how = (f"static: {kernels} CUDA kernels, aarch64 host code {'yes' if aarch64_host else 'NO'}, nvcc sm_87 "
               f"{'compiles' if compiled else 'FAILS: ' + log[-300:]}; not run (needs the Jetson, or "
               "scripts/gpu_check.py on a CUDA GPU)")
        return VerifyReport(self.name, how, float("nan"), atol, rtol, kernels > 0 and aarch64_host and compiled)


register_target(JetsonOrinTarget())
