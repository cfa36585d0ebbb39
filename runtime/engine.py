"""Policies the robot runs: one interface, three engines (the TVM runtime for native bundles, wasmtime for
wasm32 bundles, onnxruntime for .onnx).

Only the TVM *runtime* is imported here (`tvm.runtime`); on a robot, set TVM_USE_RUNTIME_LIB=1 (or install
the runtime-only library) and no compiler is loaded. Inputs are checked against the model's declared names,
shapes and dtypes before every call, so a wrong observation becomes a clear ValueError, never a crash in
native code (TVM's Gather reads out of bounds on bad token ids, for example).
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from .bundle import Bundle, TensorSpec, check_runs_here, read_bundle


class Policy(abc.ABC):
    """Observation (dict of unbatched arrays) in, action chunk out."""

    engine: str = ""

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec], *, vocabulary_size: int | None = None):
        self.inputs = inputs
        self.outputs = outputs
        self.vocabulary_size = vocabulary_size

    def prepare(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add the batch dimension and check every input; raises ValueError naming what is wrong."""
        feed = {}
        for spec in self.inputs:
            if spec.name not in observation:
                raise ValueError(f"observation lacks {spec.name!r}; the policy needs {[s.name for s in self.inputs]}, "
                                 f"got {sorted(observation)}")
            value = np.asarray(observation[spec.name])
            if value.shape == spec.shape[1:]:
                value = value[None]
            if value.shape != spec.shape or value.dtype != np.dtype(spec.dtype):
                raise ValueError(f"observation {spec.name!r}: expected shape {spec.shape[1:]} (or batched "
                                 f"{spec.shape}) dtype {spec.dtype}, got shape {np.asarray(observation[spec.name]).shape} "
                                 f"dtype {value.dtype}")
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise ValueError(f"observation {spec.name!r} contains NaN or inf")
            if value.dtype.kind in "iu" and self.vocabulary_size is not None and spec.name == "instruction":
                if value.min() < 0 or value.max() >= self.vocabulary_size:
                    raise ValueError(f"instruction token ids must be in [0, {self.vocabulary_size}), got "
                                     f"{value.min()}..{value.max()}")
            feed[spec.name] = np.ascontiguousarray(value)
        return feed

    def infer(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """The first output (the action chunk), without the batch dimension."""
        return self.run(self.prepare(observation))[0][0]

    @abc.abstractmethod
    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run on already prepared (batched, checked) inputs; returns every output."""


class OnnxRuntimePolicy(Policy):
    engine = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int = 1, vocabulary_size: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"onnxruntime cannot load {path}: {e}") from e
        inputs = [TensorSpec(i.name, tuple(i.shape), _ORT_TYPES[i.type]) for i in self.session.get_inputs()]
        outputs = [TensorSpec(o.name, tuple(o.shape), _ORT_TYPES[o.type]) for o in self.session.get_outputs()]
        super().__init__(inputs, outputs, vocabulary_size=vocabulary_size)

    def run(self, feed):
        return self.session.run(None, feed)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(float16)": "float16"}


class TvmPolicy(Policy):
    """A compiled bundle run by the TVM runtime's Relax VM."""

    engine = "tvm"

    def __init__(self, bundle: Bundle):
        import tvm.runtime
        from tvm.runtime import vm as tvm_vm

        check_runs_here(bundle)
        self.bundle = bundle
        self._tvm = tvm.runtime
        # jetson-orin bundles run their kernels on the GPU; every other target on the CPU
        self.device = tvm.runtime.cuda(0) if bundle.target.get("device") == "cuda" else tvm.runtime.cpu(0)
        try:
            library = tvm.runtime.load_module(str(bundle.library))
        except Exception as e:  # TVM raises tvm.error.* or OSError for a broken library
            raise ValueError(f"TVM cannot load {bundle.library}: {e}") from e
        self.vm = tvm_vm.VirtualMachine(library, self.device)
        self._main = self.vm["main"]
        super().__init__(bundle.inputs, bundle.outputs, vocabulary_size=bundle.manifest.get("vocabulary_size"))

    def run(self, feed):
        args = [self._tvm.tensor(feed[spec.name], self.device) for spec in self.inputs]
        result = self._main(*args)
        if hasattr(result, "numpy"):
            return [result.numpy()]
        return [r.numpy() for r in result]


def load_policy(path: str | Path, *, vocabulary_size: int | None = None) -> Policy:
    """A bundle directory -> TVM policy (files checked first); a .onnx file -> onnxruntime policy."""
    path = Path(path)
    if path.is_dir():
        bundle = read_bundle(path)
        return WasmPolicy(bundle) if bundle.target.get("arch") == "wasm32" else TvmPolicy(bundle)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        return OnnxRuntimePolicy(path, vocabulary_size=vocabulary_size)
    raise ValueError(f"{path} is neither a bundle directory nor a .onnx file")


class WasmPolicy(Policy):
    """A wasm32 bundle (one self-contained model.wasm, no imports) run by wasmtime on any machine: the module
    is compiled once; every call copies the inputs into its memory, runs it, and copies the outputs out."""

    engine = "wasmtime"

    def __init__(self, bundle: Bundle):
        try:
            import wasmtime
        except ImportError as e:
            raise ValueError("running a wasm32 bundle needs the wasmtime package: pip install wasmtime") from e
        self.bundle = bundle
        engine = wasmtime.Engine()
        self._store = wasmtime.Store(engine)
        try:
            module = wasmtime.Module.from_file(engine, str(bundle.library))
            instance = wasmtime.Linker(engine).instantiate(self._store, module)
        except Exception as e:  # wasmtime raises its own error types for a broken or foreign module
            raise ValueError(f"wasmtime cannot load {bundle.library}: {e}") from e
        self._exports = instance.exports(self._store)
        if "_initialize" in self._exports:
            self._exports["_initialize"](self._store)
        self._memory = self._exports["memory"]
        super().__init__(bundle.inputs, bundle.outputs, vocabulary_size=bundle.manifest.get("vocabulary_size"))
        for i, spec in enumerate(self.inputs):
            expected = int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
            if self._call("evla_input_bytes", i) != expected:
                raise ValueError(f"{bundle.library}: input {spec.name!r} takes {self._call('evla_input_bytes', i)} "
                                 f"bytes, the manifest says {expected}; the bundle is inconsistent: compile it again")

    def _call(self, name: str, *args):
        return self._exports[name](self._store, *args)

    def run(self, feed):
        for i, spec in enumerate(self.inputs):
            self._memory.write(self._store, np.ascontiguousarray(feed[spec.name]).tobytes(), self._call("evla_input", i))
        status = self._call("evla_run")
        if status != 0:
            at = self._call("evla_last_error")
            message = bytes(self._memory.read(self._store, at, at + 1024)).split(b"\0")[0].decode(errors="replace")
            raise RuntimeError(f"{self.bundle.library}: kernel call {status - 1} failed: {message}")
        raw = []
        for i in range(len(self.outputs)):
            at, size = self._call("evla_output", i), self._call("evla_output_bytes", i)
            raw.append(bytes(self._memory.read(self._store, at, at + size)))
        return decode_outputs(self.outputs, raw)


def decode_outputs(specs: list[TensorSpec], raw: list[bytes]) -> list[np.ndarray]:
    """Output buffers of a wasm32 module (raw little-endian bytes) as arrays of the manifest's shapes."""
    outputs = []
    for spec, data in zip(specs, raw):
        expected = int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
        if len(data) != expected:
            raise RuntimeError(f"output {spec.name!r}: the module returned {len(data)} bytes, expected {expected}")
        outputs.append(np.frombuffer(data, dtype=spec.dtype).reshape(spec.shape).copy())
    return outputs
