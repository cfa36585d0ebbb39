"""`wasm32` target: WebAssembly with SIMD128, as one self-contained module that needs no imports.

The TVM wheel has no wasm runtime, so the bundle is the TVM kernels (one wasm32 object from TVM's LLVM) plus
an ahead-of-time C driver generated from the planned Relax program (targets/aot.py), linked by `zig cc`
(PyPI ziglang: clang + wasm-ld + wasi-libc for expf/erff/aligned_alloc) into `model.wasm`, with the weights
embedded. The module imports nothing (no WASI), so browsers, node, wasmtime and any other engine load it
with an empty import object; `model.mjs` in the bundle is a small ES-module wrapper for browsers and node.
Verified here by running the whole model in wasmtime (Python package) AND in node, each against the
onnxruntime reference pair.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgevla.runtime.bundle import Bundle, compare_outputs
from edgevla.runtime.engine import decode_outputs
from .base import BuildOptions, Target, VerifyReport, register_target

WASM_FILE = "model.wasm"
JS_FILE = "model.mjs"

# The ES module shipped next to model.wasm: load it in a browser or node and run it on raw input bytes.
MODEL_MJS = r"""// edgevla wasm32 bundle: run model.wasm in a browser or node. The module imports nothing.
//   const model = await loadModel(await (await fetch('model.wasm')).arrayBuffer());
//   const [actions] = model.run([imageBytes, instructionBytes, stateBytes]);  // manifest.json order
// Inputs are typed arrays (or ArrayBuffers) holding exactly manifest.json's shapes and dtypes, little
// endian; outputs come back as Uint8Array copies (view them with e.g. new Float32Array(out.buffer)).
// node CLI (used by `edgevla verify`): node model.mjs model.wasm OUT_DIR IN_0.bin IN_1.bin ...

function cString(memory, ptr) {
  const bytes = new Uint8Array(memory.buffer, ptr);
  let end = 0;
  while (end < bytes.length && bytes[end] !== 0) end++;
  return new TextDecoder().decode(bytes.subarray(0, end));
}

export async function loadModel(wasmBytes) {
  const { instance } = await WebAssembly.instantiate(wasmBytes, {});
  const e = instance.exports;
  if (e._initialize) e._initialize();
  const numInputs = e.evla_num_inputs(), numOutputs = e.evla_num_outputs();
  return {
    numInputs, numOutputs,
    inputBytes: Array.from({ length: numInputs }, (_, i) => e.evla_input_bytes(i)),
    outputBytes: Array.from({ length: numOutputs }, (_, i) => e.evla_output_bytes(i)),
    run(inputs) {
      if (inputs.length !== numInputs) throw new Error(`expected ${numInputs} inputs, got ${inputs.length}`);
      inputs.forEach((value, i) => {
        const bytes = value instanceof ArrayBuffer ? new Uint8Array(value)
          : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
        const expected = e.evla_input_bytes(i);
        if (bytes.length !== expected) throw new Error(`input ${i}: expected ${expected} bytes, got ${bytes.length}`);
        new Uint8Array(e.memory.buffer, e.evla_input(i), expected).set(bytes);
      });
      const status = e.evla_run();
      if (status !== 0) throw new Error(`kernel call ${status - 1} failed: ${cString(e.memory, e.evla_last_error())}`);
      return Array.from({ length: numOutputs },
        (_, i) => new Uint8Array(e.memory.buffer, e.evla_output(i), e.evla_output_bytes(i)).slice());
    },
  };
}

const isNodeMain = typeof process !== 'undefined' && process.argv && process.argv[1] &&
  import.meta.url === (await import('node:url')).pathToFileURL(process.argv[1]).href;
if (isNodeMain) {
  const fs = await import('node:fs');
  const path = await import('node:path');
  const [wasmPath, outDir, ...inputPaths] = process.argv.slice(2);
  const model = await loadModel(fs.readFileSync(wasmPath));
  const outputs = model.run(inputPaths.map((p) => fs.readFileSync(p)));
  outputs.forEach((out, i) => fs.writeFileSync(path.join(outDir, `out_${i}.bin`), out));
  console.log(JSON.stringify({ engine: `node ${process.version}`, outputs: outputs.length }));
}
"""


def _zig_cc() -> list[str]:
    try:
        import ziglang  # noqa: F401
    except ImportError as e:
        raise RuntimeError("the wasm32 target links with zig cc: pip install ziglang (in the test extras)") from e
    return [sys.executable, "-m", "ziglang", "cc"]


def _ffi_includes() -> list[str]:
    import tvm_ffi

    root = Path(tvm_ffi.__file__).parent
    return [f"-I{root / 'include'}", f"-I{root / '3rdparty' / 'dlpack' / 'include'}"]


class Wasm32Target(Target):
    name = "wasm32"
    arch = "wasm32"
    description = "WebAssembly + SIMD128 (browsers, node, wasmtime); one module, no imports"
    c_kernel_arch = "wasm32"

    def tvm_target(self) -> dict:
        return {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm", "mattr": ["+simd128"]}

    def build(self, model: onnx.ModelProto, out_dir: Path, options: BuildOptions) -> Path:
        import tvm

        self.refuse_tuning(options.tuning, "TVM's RPC has no server for a wasm engine here to measure candidates on")
        from . import aot, ckernels, tvm_backend

        mod = tvm_backend.import_onnx(model, c_kernels=options.c_kernels, int8_activations=options.int8_activations)
        target = tvm.target.Target(self.tvm_target())
        lowered = aot.lower_for_aot(mod, target)
        plan = aot.plan_main(lowered)
        out_dir = Path(out_dir)
        with tempfile.TemporaryDirectory(prefix="edgevla-wasm-") as tmp:
            tmp = Path(tmp)
            with target:
                executable = tvm.compile(aot.kernel_module(lowered), target=target)
            executable.mod.write_to_file(str(tmp / "kernels.o"))
            (tmp / "weights.bin").write_bytes(plan.constant_blob())
            (tmp / "driver.c").write_text(aot.generate_driver(plan, title=model.graph.name or "model"))
            objects = [str(o) for o in ckernels.link_objects("wasm32")] if options.c_kernels else []
            command = [*_zig_cc(), "--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-std=c23", "-msimd128",
                       *_ffi_includes(), "driver.c", "kernels.o", *objects, "-o", str(out_dir / WASM_FILE),
                       "-Wl,--strip-debug"]
            result = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"linking the wasm32 module failed: {result.stderr[-3000:]}")
        (out_dir / JS_FILE).write_text(MODEL_MJS)
        imports = wasm_imports(out_dir / WASM_FILE)
        if imports:
            raise RuntimeError(f"the wasm32 module imports {imports}; it must be self-contained (no WASI): a kernel "
                               "calls a libc function that needs the host")
        return out_dir / WASM_FILE

    def run_check(self, bundle: Bundle, inputs: dict[str, np.ndarray]):
        return run_wasmtime(bundle, inputs)

    def verify(self, bundle: Bundle) -> VerifyReport:
        """The whole model in wasmtime AND in node; passes only if both match the reference."""
        inputs, expected = bundle.check_pair()
        atol, rtol = bundle.tolerance
        results = [run_wasmtime(bundle, inputs), run_node(bundle, inputs)]
        checks = [compare_outputs(outputs, expected, atol, rtol) for outputs, _ in results]
        worst = max(error for _, error in checks)
        how = " and ".join(engine for _, engine in results)
        return VerifyReport(self.name, how, worst, atol, rtol, all(passed for passed, _ in checks))


def _package_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def wasm_imports(path: Path) -> list[str]:
    from wasmtime import Engine, Module

    return [f"{i.module}.{i.name}" for i in Module.from_file(Engine(), str(path)).imports]


def _ordered_inputs(bundle: Bundle, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    arrays = []
    for spec in bundle.inputs:
        if spec.name not in inputs:
            raise ValueError(f"input {spec.name!r} is missing; the bundle takes {[s.name for s in bundle.inputs]}")
        value = np.asarray(inputs[spec.name])
        if list(value.shape) != list(spec.shape) or value.dtype != np.dtype(spec.dtype):
            raise ValueError(f"input {spec.name!r}: expected {spec.dtype}{list(spec.shape)}, got "
                             f"{value.dtype}{list(value.shape)}")
        arrays.append(np.ascontiguousarray(value))
    return arrays


def run_wasmtime(bundle: Bundle, inputs: dict[str, np.ndarray]) -> tuple[list[np.ndarray], str]:
    """Run the bundle's model.wasm in wasmtime (the runtime's WasmPolicy); (outputs, engine description)."""
    from edgevla.runtime.engine import WasmPolicy

    arrays = _ordered_inputs(bundle, inputs)
    policy = WasmPolicy(bundle)
    return policy.run({spec.name: a for spec, a in zip(bundle.inputs, arrays)}), f"wasmtime {_package_version('wasmtime')}"


def run_node(bundle: Bundle, inputs: dict[str, np.ndarray]) -> tuple[list[np.ndarray], str]:
    """Run the bundle's model.wasm in node through the bundle's own model.mjs; (outputs, engine)."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed (Debian package nodejs; scripts/setup.sh installs it); the wasm32 "
                           "check runs the module in node as well as in wasmtime")
    with tempfile.TemporaryDirectory(prefix="edgevla-node-") as tmp:
        tmp = Path(tmp)
        paths = []
        for i, value in enumerate(_ordered_inputs(bundle, inputs)):
            paths.append(tmp / f"in_{i}.bin")
            paths[-1].write_bytes(value.tobytes())
        result = subprocess.run([node, str(bundle.path / JS_FILE), str(bundle.library), str(tmp), *map(str, paths)],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"the wasm32 module failed in node: {result.stderr.strip()[-2000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        raw = [(tmp / f"out_{i}.bin").read_bytes() for i in range(report["outputs"])]
        return decode_outputs(bundle.outputs, raw), report["engine"]


register_target(Wasm32Target())
