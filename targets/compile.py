"""`edgevla compile` and `edgevla verify`: ONNX -> bundle directory for a target, and its check."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx

from edgevla.runtime.bundle import Bundle, read_bundle, write_manifest
from edgevla.runtime import formats
from .base import BuildOptions, VerifyReport, get_target

# Named tolerances for bundle checks against onnxruntime (same model, same input, float32 reordering only).
TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}
# Bundles compiled with int8 activations (binary and haar_binary layers quantize each activation row to int8,
# absmax / 127): one quantization step per input, compounded over the layers. Measured on the reach policy and
# a 4-block 768-wide stack (tests/test_int8_activations.py): worst |error| <= ~1% of the largest output.
TOLERANCE_INT8_ACTIVATIONS = {"atol": 3e-2, "rtol": 3e-2}


def _tensor_specs(values) -> list[dict]:
    specs = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if any(d is None for d in dims):
            raise ValueError(f"{v.name!r} has a symbolic dimension {dims}; compile needs static shapes: export "
                             "with dynamic_batch=False")
        specs.append({"name": v.name, "shape": dims,
                      "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))})
    return specs


def integer_input_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """For integer inputs used as Gather indices (token ids), the table size they must stay below."""
    initializers = {init.name: init for init in model.graph.initializer}
    bounds = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in initializers:
            bounds[node.input[1]] = int(initializers[node.input[0]].dims[0])
    return bounds


def reference_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """A deterministic, valid input for every graph input (token ids within their table)."""
    rng = np.random.default_rng(seed)
    bounds = integer_input_bounds(model)
    inputs = {}
    for spec in _tensor_specs(model.graph.input):
        dtype = np.dtype(spec["dtype"])
        if dtype == np.uint8:
            inputs[spec["name"]] = rng.integers(0, 256, spec["shape"], dtype=np.uint8)
        elif dtype.kind in "iu":
            inputs[spec["name"]] = rng.integers(0, bounds.get(spec["name"], 2), spec["shape"]).astype(dtype)
        else:
            inputs[spec["name"]] = rng.normal(size=spec["shape"]).astype(dtype)
    return inputs


KERNEL_CHOICES = ("auto", "c", "tir")
DENSE_CHOICES = ("auto", "library", "tvm")
ACTIVATION_CHOICES = ("fp32", "int8")


def compile_bundle(onnx_path: str | Path, target: str, out_dir: str | Path, *, overwrite: bool = True,
                   kernels: str = "auto", dense: str = "auto", activations: str = "fp32", tuning=None) -> Bundle:
    """Compile an ONNX file for `target` into a bundle directory and record a reference check pair.

    kernels: "c" links the kernels_arm C kernels for the formats that have one (binary, nm, haar_binary,
    group_sparse), "tir" uses TIR
    kernels only, "auto" (default) picks "c" wherever the target has a kernels_arm build: measured 2.5x
    faster for the 1-bit reach policy on the host (`edgevla bench compile`).
    dense: "library" runs fp32 MatMul/Conv2d with constant weights in the target's dense library (oneDNN on
    x86_64 hosts; `edgevla bench compile` measured it against onnxruntime), "tvm" lets TVM compile them,
    "auto" (default) picks "library" wherever the target has one.
    activations: "fp32" (default) computes every layer as the ONNX file defines it; "int8" lets the 1-bit layers
    (binary, haar_binary: C kernels only) quantize each activation row to int8 and run 1-bit x int8 dot
    products (4x fewer instructions per weight on AVX-512 VNNI), as onnxruntime's quantize_dynamic does for
    its int8 MatMul: an approximation, checked against onnxruntime with TOLERANCE_INT8_ACTIVATIONS.
    tuning: a targets.tune.TuneSettings to schedule the kernels with MetaSchedule first (`edgevla tune`); the
    report goes into the bundle (tuning.json) and its manifest.
    """
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
    if dense not in DENSE_CHOICES:
        raise ValueError(f"dense must be one of {DENSE_CHOICES}, got {dense!r}")
    if activations not in ACTIVATION_CHOICES:
        raise ValueError(f"activations must be one of {ACTIVATION_CHOICES}, got {activations!r}")
    import onnxruntime as ort

    from edgevla import __version__
    from . import ckernels, tvm_backend

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    target_impl = get_target(target)
    use_c = kernels == "c" or (kernels == "auto" and target_impl.c_kernel_arch is not None)
    if use_c and target_impl.c_kernel_arch is None:
        raise ValueError(f"target {target_impl.name} has no kernels_arm build to link; use kernels='tir'")
    if activations == "int8" and not use_c:
        raise ValueError(f"int8 activations run in the kernels_arm C kernels, which target {target_impl.name} "
                         f"{'has but kernels=tir excludes' if target_impl.c_kernel_arch else 'does not link'}; use "
                         "kernels='auto' on a target with C kernels, or activations='fp32'")
    use_dense = dense == "library" or (dense == "auto" and target_impl.dense_library_arch is not None)
    if use_dense and target_impl.dense_library_arch is None:
        raise ValueError(f"target {target_impl.name} has no dense library; use dense='tvm'")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX file at {onnx_path}")
    model = onnx.load(str(onnx_path))
    if out_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists; choose another -o or remove it")
        shutil.rmtree(out_dir)
    (out_dir / "check").mkdir(parents=True)
    library = target_impl.build(model, out_dir, BuildOptions(c_kernels=use_c, int8_activations=activations == "int8",
                                                             dense_library=use_dense, tuning=tuning))
    tuning_report = out_dir / "tuning.json"

    inputs = reference_inputs(model)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, inputs)
    check_inputs, check_outputs = {}, []
    for i, (name, value) in enumerate(inputs.items()):
        np.save(out_dir / "check" / f"input_{i}.npy", value, allow_pickle=False)
        check_inputs[name] = f"check/input_{i}.npy"
    for i, value in enumerate(outputs):
        np.save(out_dir / "check" / f"output_{i}.npy", value, allow_pickle=False)
        check_outputs.append(f"check/output_{i}.npy")
    bounds = integer_input_bounds(model)
    meta = {entry.key: entry.value for entry in model.metadata_props}
    manifest = {
        "target": {"name": target_impl.name, "arch": target_impl.arch, "tvm_target": target_impl.tvm_target(),
                   "device": getattr(target_impl, "device", "cpu")},
        "kernels": "c" if use_c else "tir",
        "dense": ckernels.DENSE_LIBRARIES[target_impl.dense_library_arch].name if use_dense else "tvm",
        "activations": activations,
        "tuning": json.loads(tuning_report.read_text()) if tuning_report.is_file() else None,
        "library": library.relative_to(out_dir).as_posix(),
        "inputs": _tensor_specs(model.graph.input),
        "outputs": _tensor_specs(model.graph.output),
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "edgevla_version": __version__,
        "tvm_version": tvm_backend.tvm_version(),
        "format_version": formats.FORMAT_VERSION,
        "vocabulary_size": min(bounds.values()) if bounds else None,
        "compression": json.loads(meta.get("edgevla_layers", "{}")),
        "check": {"inputs": check_inputs, "outputs": check_outputs,
                  **(TOLERANCE_INT8_ACTIVATIONS if activations == "int8" else TOLERANCE)},
    }
    return write_manifest(out_dir, manifest)


def verify_bundle(bundle_dir: str | Path) -> VerifyReport:
    bundle = read_bundle(bundle_dir)
    return get_target(bundle.target["name"]).verify(bundle)
