"""On a machine with a CUDA GPU: build the 1-bit and 2:4 reference policies for that GPU, run, compare.

The jetson-orin target is checked statically on machines without its GPU (kernel count, nvcc for sm_87).
This script is the dynamic half: the same TVM pipeline (dlight GPU schedules over edgevla's packed-format
kernels) built for the local GPU, run on it and compared with onnxruntime on the CPU. It prints one line
per case and exits 0 only if all match within the bundle tolerance.

    .venv/bin/python scripts/gpu_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def gpu_present() -> bool:
    import tvm

    return bool(tvm.runtime.cuda(0).exist)


def main(argv=None) -> int:
    import onnx
    import onnxruntime as ort
    import torch
    import tvm
    from tvm.runtime import vm as tvm_vm

    from edgevla.exporters.compress import compress
    from edgevla.exporters.onnx_export import export
    from edgevla.models.reach_vla import ReachVLA
    from edgevla.targets import tvm_backend
    from edgevla.targets.compile import TOLERANCE, reference_inputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="artifacts/gpu_check")
    args = parser.parse_args(argv)
    if not gpu_present():
        print("no CUDA GPU visible to TVM here: nothing to run (the jetson-orin target is still checked "
              "statically by edgevla verify)")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = tvm.runtime.cuda(0)
    arch = "sm_" + device.compute_version.replace(".", "")
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    print(f"GPU {device.device_name} ({arch})")
    torch.manual_seed(0)
    model = ReachVLA().eval()
    example = (torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8), torch.tensor([[1, 2, 3, 5]]),
               torch.randn(1, 8))
    ok = True
    for name, method, options in [("1-bit sign", "sign", {"group_size": 64}),
                                  ("2:4 sparsegpt", "nm", {"n": 2, "m": 4, "criterion": "sparsegpt"}),
                                  ("hbvla", "hbvla", {})]:
        compressed = compress(model, method, calibration=[example], include=["blocks.*"], **options).model
        path = out / f"{method}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export(compressed, example, path, input_names=["image", "instruction", "state"], output_names=["actions"])
        proto = onnx.load(str(path))
        started = time.perf_counter()
        with target:
            executable = tvm.compile(tvm_backend.import_onnx(proto), target=target)
        build_s = time.perf_counter() - started
        machine = tvm_vm.VirtualMachine(executable, device)
        inputs = reference_inputs(proto)
        got = machine["main"](*[tvm.runtime.tensor(v, device) for v in inputs.values()]).numpy()
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
        error = float(np.abs(got - want).max())
        match = bool(np.allclose(got, want, **TOLERANCE))
        ok &= match
        print(f"{'PASS' if match else 'FAIL'} {name}: built in {build_s:.1f} s, max |error| {error:.3g} vs onnxruntime")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
