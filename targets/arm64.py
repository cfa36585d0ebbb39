"""`arm64` targets: aarch64 Linux boards (generic armv8-a NEON, Raspberry Pi 5, Jetson Orin CPU).

Built with TVM's LLVM for aarch64 and linked by the aarch64 GNU cross compiler; verified here by running the
bundle with the edgevla runtime inside an aarch64 Python under qemu-aarch64 (see emulate/arm64_python.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgevla.runtime.bundle import Bundle
from .base import BuildOptions, Target, register_target

CROSS_COMPILER = "aarch64-linux-gnu-g++"

_RUNNER = """
import json, sys
from pathlib import Path
import numpy as np
from edgevla.runtime.engine import load_policy
bundle, out = Path({bundle!r}), Path({out!r})
policy = load_policy(bundle)
inputs = {{name: np.load(out / f"in_{{i}}.npy", allow_pickle=False) for i, name in enumerate({names!r})}}
outputs = policy.run(policy.prepare(inputs))
for i, value in enumerate(outputs):
    np.save(out / f"out_{{i}}.npy", value)
import platform
print(json.dumps({{"machine": platform.machine(), "outputs": len(outputs)}}))
"""


class Arm64Target(Target):
    arch = "aarch64"

    def __init__(self, name: str, cpu: str | None, description: str):
        self.name = name
        self.cpu = cpu
        self.description = description

    def tvm_target(self) -> dict:
        target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
        if self.cpu:
            target["mcpu"] = self.cpu
        return target

    c_kernel_arch = "aarch64"

    def build(self, model: onnx.ModelProto, out_dir: Path, options: BuildOptions) -> Path:
        from . import ckernels, tune, tvm_backend

        tuning = options.tuning
        if tuning is not None and tuning.rpc is None:
            raise ValueError(f"tuning {self.name} needs the board: measure through an RPC tracker (--rpc-tracker "
                             "HOST:PORT --rpc-key KEY); timings under qemu say nothing about the board's speed")
        if shutil.which(CROSS_COMPILER) is None:
            raise RuntimeError(f"{CROSS_COMPILER} is not installed: run scripts/setup.sh as root (Debian package "
                               "g++-aarch64-linux-gnu) or put an aarch64 cross g++ on PATH")
        mod = tvm_backend.import_onnx(model, c_kernels=options.c_kernels, int8_activations=options.int8_activations)
        if tuning is not None:
            executable = tune.tune_and_compile(mod, self.tvm_target(), tuning, cross_compiler=CROSS_COMPILER,
                                               report_path=Path(out_dir) / tune.REPORT_FILE)
        else:
            executable = tvm_backend.compile_module(mod, self.tvm_target())
        addons = ckernels.link_objects("aarch64") if options.c_kernels else None
        return tvm_backend.export_library(executable, Path(out_dir) / "model.so", cross_compiler=CROSS_COMPILER,
                                          addons=addons)

    def run_check(self, bundle: Bundle, inputs: dict[str, np.ndarray]):
        from .emulate.arm64_python import run_python, runtime_tree

        with tempfile.TemporaryDirectory(prefix="edgevla-arm64-") as tmp:
            tmp = Path(tmp)
            names = [spec.name for spec in bundle.inputs]
            for i, name in enumerate(names):
                np.save(tmp / f"in_{i}.npy", inputs[name], allow_pickle=False)
            tree = runtime_tree(tmp / "device")
            result = run_python(_RUNNER.format(bundle=str(bundle.path), out=str(tmp), names=names),
                                extra_path=[tree])
            if result.returncode != 0:
                raise RuntimeError(f"the bundle failed under qemu-aarch64: {result.stderr.strip()[-2000:]}")
            report = json.loads(result.stdout.strip().splitlines()[-1])
            if report["machine"] != "aarch64":
                raise RuntimeError(f"expected to run as aarch64 under qemu, the Python reported {report['machine']}")
            outputs = [np.load(tmp / f"out_{i}.npy", allow_pickle=False) for i in range(report["outputs"])]
        return outputs, "qemu-aarch64, edgevla runtime in an aarch64 Python"


register_target(Arm64Target("arm64", None, "aarch64 Linux, generic armv8-a with NEON"))
register_target(Arm64Target("arm64-rpi5", "cortex-a76", "Raspberry Pi 5 (Cortex-A76, armv8.2-a, NEON, dotprod)"))
register_target(Arm64Target("arm64-orin-cpu", "cortex-a78", "Jetson Orin CPU cores (Cortex-A78AE), no GPU"))
