"""The `host` target: this machine's architecture, generic CPU (no -march=native), run natively."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgevla.runtime.bundle import Bundle, this_machine
from edgevla.runtime.engine import TvmPolicy
from .base import BuildOptions, Target, register_target


class HostTarget(Target):
    name = "host"
    arch = this_machine()
    description = f"this machine ({this_machine()}), generic CPU features, verified natively"

    def tvm_target(self) -> dict:
        return {"kind": "llvm"}

    c_kernel_arch = this_machine() if this_machine() == "x86_64" else None
    dense_library_arch = this_machine() if this_machine() == "x86_64" else None

    def build(self, model: onnx.ModelProto, out_dir: Path, options: BuildOptions) -> Path:
        from . import ckernels, tune, tvm_backend, tvm_dense

        mod = tvm_backend.import_onnx(model, c_kernels=options.c_kernels, int8_activations=options.int8_activations)
        addons, link_options = (ckernels.link_objects(self.c_kernel_arch) if options.c_kernels else []), []
        if options.dense_library:
            mod, _ = tvm_dense.lower_dense_ops(mod)
            objects, link_options = ckernels.dense_library_objects(self.dense_library_arch)
            addons += objects
        if options.tuning is not None:
            executable = tune.tune_and_compile(mod, self.tvm_target(), options.tuning,
                                               report_path=Path(out_dir) / tune.REPORT_FILE)
        else:
            executable = tvm_backend.compile_module(mod, self.tvm_target())
        return tvm_backend.export_library(executable, Path(out_dir) / "model.so", addons=addons,
                                          link_options=link_options)

    def run_check(self, bundle: Bundle, inputs):
        policy = TvmPolicy(bundle)
        return policy.run(policy.prepare(inputs)), "natively"


register_target(HostTarget())
