"""The host target: TVM compiles the 1-bit policy, the bundle matches onnxruntime, weights stay packed."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgevla.runtime.bundle import BundleError, read_bundle
from edgevla.runtime.engine import TvmPolicy
from edgevla.targets import compile_bundle, get_target, verify_bundle
from edgevla.targets import tvm_backend


def test_compiled_bundle_matches_onnxruntime(reach_bundle):
    report = verify_bundle(reach_bundle)
    assert report.passed, report.line()
    assert report.max_abs_error < 1e-4
    manifest = read_bundle(reach_bundle).manifest
    assert manifest["target"]["name"] == "host" and manifest["vocabulary_size"] == 6
    assert set(manifest["files"]) >= {"model.so", "check/input_0.npy", "check/output_0.npy"}


def test_random_inputs_match_onnxruntime_too(reach_bundle, reach_onnx):
    import onnxruntime as ort

    policy = TvmPolicy(read_bundle(reach_bundle))
    session = ort.InferenceSession(str(reach_onnx["binary"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for _ in range(3):
        obs = {"image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
               "instruction": np.array([1, 2, rng.integers(3, 5), 5], dtype=np.int64),
               "state": rng.normal(size=8).astype(np.float32)}
        expected = session.run(None, {k: v[None] for k, v in obs.items()})[0][0]
        np.testing.assert_allclose(policy.infer(obs), expected, atol=1e-4, rtol=1e-3)


def test_compiled_module_holds_packed_weights_not_dense(reach_onnx):
    model = onnx.load(str(reach_onnx["binary"]))
    mod = tvm_backend.import_onnx(model)
    constants = tvm_backend.relax_constants(mod)
    binarized = [n for n in model.graph.node if n.op_type == "BinaryMatMul"]
    inits = {i.name: i for i in model.graph.initializer}
    dense_sizes = set()
    for node in binarized:
        bits = inits[node.input[1]]
        k = next(a.i for a in node.attribute if a.name == "in_features")
        dense_sizes.add(int(bits.dims[0]) * k)
        assert any(c.dtype == "uint8" and c.shape == tuple(bits.dims) for c in constants), node.name
    floats = [c for c in constants if c.dtype.startswith("float")]
    assert floats, "the unbinarized layers should remain as float constants"
    too_big = [c for c in floats if int(np.prod(c.shape)) in dense_sizes]
    assert not too_big, f"dense float tensors the size of a binarized layer: {too_big}"
    # and the lowered module calls our packed kernel, not a matmul on a decompressed weight
    names = [gv.name_hint for gv, _ in mod.functions_items()]
    assert sum(name.startswith("edgevla_binary_matmul") for name in names) >= 1


def test_unsupported_op_is_named(tmp_path):
    node = helper.make_node("FancyOp", ["x"], ["y"], name="layer7/fancy", domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(tvm_backend.UnsupportedOperatorError, match=r"layer7/fancy.*FancyOp.*com\.example"):
        compile_bundle(path, "host", tmp_path / "bundle")


def test_unknown_target_lists_known_ones(reach_onnx, tmp_path):
    with pytest.raises(KeyError, match="known targets: .*'arm64'.*'host'.*'jetson-orin'"):
        compile_bundle(reach_onnx["binary"], "risc-v", tmp_path / "b")


def test_wrong_observation_is_a_clear_error(reach_bundle):
    policy = TvmPolicy(read_bundle(reach_bundle))
    good = {"image": np.zeros((64, 64, 3), np.uint8), "instruction": np.array([1, 2, 3, 5]),
            "state": np.zeros(8, np.float32)}
    policy.infer(good)
    with pytest.raises(ValueError, match="'image': expected shape \\(64, 64, 3\\).*got shape \\(32, 32, 3\\)"):
        policy.infer(dict(good, image=np.zeros((32, 32, 3), np.uint8)))
    with pytest.raises(ValueError, match="'state'.*dtype float32.*float64"):
        policy.infer(dict(good, state=np.zeros(8)))
    with pytest.raises(ValueError, match="token ids"):
        policy.infer(dict(good, instruction=np.array([1, 2, 99, 5])))
    with pytest.raises(ValueError, match="lacks 'state'"):
        policy.infer({k: v for k, v in good.items() if k != "state"})


def test_tampered_or_foreign_bundle_is_refused(reach_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(reach_bundle, copy)
    with open(copy / "model.so", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="model.so: sha256 .* does not match"):
        TvmPolicy(read_bundle(copy))
    shutil.rmtree(copy)
    shutil.copytree(reach_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target"]["arch"] = "aarch64"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="built for aarch64.*this device is x86_64"):
        TvmPolicy(read_bundle(copy))
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle(copy)


def test_runtime_runs_without_torch_exporters_or_compiler(reach_bundle, reach_onnx):
    # Simulate the robot: torch, onnx, the dev-side packages and TVM's compiler cannot be imported at all.
    # (tvm_ffi imports torch when it is installed; on a robot it is not, which this block reproduces.)
    code = f"""
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        for banned in ("torch", "onnx", "onnxscript", "edgevla.exporters", "edgevla.targets", "tvm.relax",
                       "matplotlib"):
            if name == banned or name.startswith(banned + "."):
                raise ImportError("blocked on the robot: " + name)
sys.meta_path.insert(0, Blocked())
import numpy as np
import edgevla, edgevla.runtime.loop, edgevla.runtime.robots.sim_reach, edgevla.runtime.robots.servo_arm
import edgevla.runtime.robots.connect, edgevla.runtime.buses.emulator, edgevla.runtime.telemetry
from edgevla.runtime.engine import load_policy
obs = {{"image": np.zeros((64, 64, 3), np.uint8), "instruction": np.array([1, 2, 3, 5]),
       "state": np.zeros(8, np.float32)}}
for path in ({str(reach_bundle)!r}, {str(reach_onnx["binary"])!r}):
    print(path, load_policy(path).infer(obs).shape)
print("OK")
"""
    import os

    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK"), out.stdout


def test_get_target_host_describes_itself():
    target = get_target("host")
    assert target.tvm_target() == {"kind": "llvm"} and target.arch == "x86_64"


@pytest.mark.parametrize("rows,n,k,group", [(1, 16, 64, 64), (3, 5, 70, 64), (2, 33, 13, 8), (14, 160, 160, 80),
                                            (4, 7, 200, 128)])
def test_binary_kernel_matches_format_reference(rows, n, k, group):
    import tvm

    from edgevla.runtime import formats
    from edgevla.targets import tvm_kernels

    rng = np.random.default_rng(rows * n + k)
    packed = formats.pack_binary(rng.normal(size=(n, k)).astype(np.float32), group_size=group)
    x = rng.normal(size=(rows, k)).astype(np.float32)
    kernel = tvm_kernels.binary_matmul_kernel(rows, n, k, group).with_attr("global_symbol", "main")
    executable = tvm_backend.compile_module(tvm.IRModule({"main": kernel}), get_target("host").tvm_target())
    y = tvm.runtime.tensor(np.zeros((rows, n), np.float32))
    executable["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed.arrays["bits"]),
                       tvm.runtime.tensor(packed.arrays["scales"]), y)
    np.testing.assert_allclose(y.numpy(), formats.get_format("binary").matmul_ref(x, packed), atol=1e-4, rtol=1e-4)
