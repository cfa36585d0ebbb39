"""The wasm32 target: TVM kernels + an ahead-of-time C driver, one module with no imports, run in wasmtime and
node (and by the runtime's WasmPolicy on any machine)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from edgevla.runtime.bundle import read_bundle
from edgevla.runtime.engine import WasmPolicy, load_policy
from edgevla.targets import aot, compile_bundle, verify_bundle
from edgevla.targets.wasm32 import run_node, run_wasmtime, wasm_imports

WASM_MAGIC = b"\0asm"


@pytest.fixture(scope="module")
def wasm_bundle(reach_onnx, tmp_path_factory):
    return compile_bundle(reach_onnx["binary"], "wasm32", tmp_path_factory.mktemp("wasm") / "reach_binary_wasm32")


def test_module_is_self_contained_and_holds_packed_weights(wasm_bundle, binarized_dense_bytes):
    library = wasm_bundle.library.read_bytes()
    assert library[:4] == WASM_MAGIC
    assert wasm_imports(wasm_bundle.library) == []  # loads in any engine with an empty import object
    dense = binarized_dense_bytes
    assert len(library) < dense, f"wasm module {len(library):,} B >= dense binarized layers {dense:,} B"
    assert wasm_bundle.manifest["kernels"] == "c" and wasm_bundle.manifest["target"]["arch"] == "wasm32"
    assert (wasm_bundle.path / "model.mjs").is_file()


def test_plan_holds_no_dense_copy_of_a_binarized_layer(reach_onnx):
    import tvm

    from edgevla.targets import tvm_backend
    from edgevla.targets.wasm32 import Wasm32Target

    model = onnx.load(str(reach_onnx["binary"]))
    lowered = aot.lower_for_aot(tvm_backend.import_onnx(model), tvm.target.Target(Wasm32Target().tvm_target()))
    plan = aot.plan_main(lowered)
    binarized = {(int(i.dims[0]), next(a.i for a in n.attribute if a.name == "in_features"))
                 for n in model.graph.node if n.op_type == "BinaryMatMul"
                 for i in model.graph.initializer if i.name == n.input[1]}
    dense = [c.shape for c in plan.constants if c.dtype.kind == "f" and c.ndim == 2 and tuple(c.shape) in binarized]
    assert not dense, dense
    assert any(c.dtype == np.uint8 for c in plan.constants)


def test_wasmtime_and_node_agree_with_onnxruntime_and_each_other(wasm_bundle):
    inputs, expected = wasm_bundle.check_pair()
    in_wasmtime, engine = run_wasmtime(wasm_bundle, inputs)
    in_node, node = run_node(wasm_bundle, inputs)
    assert engine.startswith("wasmtime") and node.startswith("node v")
    np.testing.assert_array_equal(in_wasmtime[0], in_node[0])  # one module, deterministic: same bits
    np.testing.assert_allclose(in_wasmtime[0], expected[0], atol=1e-4, rtol=1e-3)
    report = verify_bundle(wasm_bundle.path)
    assert report.passed and "wasmtime" in report.how and "node" in report.how, report.line()


def test_runtime_runs_a_wasm_bundle_on_any_machine(wasm_bundle):
    policy = load_policy(wasm_bundle.path)
    assert isinstance(policy, WasmPolicy) and policy.engine == "wasmtime"
    inputs, expected = wasm_bundle.check_pair()
    observation = {name: value[0] for name, value in inputs.items()}
    np.testing.assert_allclose(policy.infer(observation), expected[0][0], atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match="observation 'state': expected shape"):
        policy.infer({**observation, "state": np.zeros(3, np.float32)})


def test_wrong_inputs_are_refused_before_the_module_runs(wasm_bundle):
    inputs, _ = wasm_bundle.check_pair()
    with pytest.raises(ValueError, match=r"input 'state': expected float32\[1, 8\], got float64\[1, 8\]"):
        run_node(wasm_bundle, {**inputs, "state": inputs["state"].astype(np.float64)})
    with pytest.raises(ValueError, match="input 'image' is missing"):
        run_wasmtime(wasm_bundle, {k: v for k, v in inputs.items() if k != "image"})


def test_a_corrupt_module_is_refused(wasm_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(wasm_bundle.path, copy)
    data = bytearray((copy / "model.wasm").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.wasm").write_bytes(bytes(data))
    from edgevla.runtime.bundle import BundleError

    with pytest.raises(BundleError, match="sha256"):
        read_bundle(copy)


class _TwoOutputs(torch.nn.Module):
    """Outputs that alias an input (a reshape) and a constant-only path: the driver must copy them out."""

    def forward(self, x):
        return x.reshape(2, 6), torch.relu(x) * 2.0 + 1.0


def test_outputs_that_alias_inputs_and_several_outputs(tmp_path):
    from edgevla.exporters.onnx_export import export

    path = tmp_path / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(_TwoOutputs().eval(), (torch.randn(3, 4),), path, input_names=["x"], output_names=["a", "b"])
    bundle = compile_bundle(path, "wasm32", tmp_path / "bundle")
    report = verify_bundle(bundle.path)
    assert report.passed, report.line()
    assert len(bundle.outputs) == 2


def test_kernels_calling_the_tvm_runtime_are_refused_with_its_name(tmp_path):
    """TopK lowers to a TIR kernel that calls the runtime's packed tvm.contrib.sort.topk."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1)], "topk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 3])],
        initializer=[helper.make_tensor("k", TensorProto.INT64, [1], [3])])
    path = tmp_path / "topk.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(aot.AotError, match=r"calls the TVM runtime function\(s\) \['tvm.contrib.sort.topk'\]"):
        compile_bundle(path, "wasm32", tmp_path / "bundle")


def test_programs_needing_a_runtime_function_are_refused_with_its_name():
    import tvm
    from tvm.script import ir as I, relax as R

    from edgevla.targets.wasm32 import Wasm32Target

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((4,), "float32")) -> R.Tensor((4,), "float32"):
            y = R.call_pure_packed("my_runtime_fn", x, ty_args=R.Tensor((4,), "float32"))
            return y

    lowered = aot.lower_for_aot(Module, tvm.target.Target(Wasm32Target().tvm_target()))
    with pytest.raises(aot.AotError, match="cannot run 'my_runtime_fn'"):
        aot.plan_main(lowered)
