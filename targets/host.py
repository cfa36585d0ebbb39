"""The `host` target: this machine's architecture, generic CPU (no -march=native), run natively."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgevla.runtime.bundle import Bundle, this_machine
from edgevla.runtime.engine import TvmPolicy
from .base import Target, register_target


class HostTarget(Target):
    name = "host"
    arch = this_machine()
    description = f"this machine ({this_machine()}), generic CPU features, verified natively"

    def tvm_target(self) -> dict:
        return {"kind": "llvm"}

    def build(self, model: onnx.ModelProto, out_dir: Path) -> Path:
        from . import tvm_backend

        mod = tvm_backend.import_onnx(model)
        executable = tvm_backend.compile_module(mod, self.tvm_target())
        return tvm_backend.export_library(executable, Path(out_dir) / "model.so")

    def run_check(self, bundle: Bundle, inputs):
        policy = TvmPolicy(bundle)
        return policy.run(policy.prepare(inputs)), "natively"


register_target(HostTarget())
