"""Packed layers in torch eager, ONNX export with ai.edgevla ops, onnxruntime and onnx.reference parity."""

import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from edgevla.exporters.compress import compress
from edgevla.exporters.onnx_export import DOMAIN, export
from edgevla.exporters.packed_layers import BinaryLinear
from edgevla.runtime import formats

# Named tolerances: the same float32 math in a different order (torch vs onnxruntime vs numpy float64).
FLOAT_REORDER = {"atol": 1e-5, "rtol": 1e-4}


def binary_layer(n, k, group, bias=True, seed=0):
    torch.manual_seed(seed)
    dense = torch.nn.Linear(k, n, bias=bias)
    packed = formats.pack_binary(dense.weight.detach().numpy(), group_size=group)
    return BinaryLinear(packed, dense.bias, method="sign"), packed


@pytest.mark.parametrize("n,k,group", [(16, 64, 64), (5, 70, 64), (33, 13, 8), (8, 160, 80)])
@pytest.mark.parametrize("batch", [(1,), (3,), (2, 5)])
def test_binary_linear_eager_matches_reference(n, k, group, batch):
    layer, packed = binary_layer(n, k, group)
    x = torch.randn(*batch, k)
    expected = formats.get_format("binary").matmul_ref(x.numpy(), packed) + layer.bias.detach().numpy()
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, **FLOAT_REORDER)


@pytest.mark.parametrize("n,k,group,batch", [(16, 64, 64, 1), (5, 70, 64, 3), (33, 13, 8, 2)])
def test_exported_binary_op_runs_in_onnxruntime_and_reference(tmp_path, n, k, group, batch):
    layer, _ = binary_layer(n, k, group)
    model = torch.nn.Sequential(layer, torch.nn.ReLU()).eval()
    x = torch.randn(batch, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export(model, (x,), tmp_path / "m.onnx", input_names=["x"], output_names=["y"])
    custom = [node for node in proto.graph.node if node.domain == DOMAIN]
    assert [node.op_type for node in custom] == ["BinaryMatMul"]
    initializers = {i.name: i for i in proto.graph.initializer}
    dtypes = {initializers[name].data_type for name in custom[0].input[1:]}
    assert dtypes == {onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT16}
    assert [f.name for f in proto.functions] == ["BinaryMatMul"]
    expected = model(x).detach().numpy()
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, **FLOAT_REORDER)
    np.testing.assert_allclose(ReferenceEvaluator(proto).run(None, {"x": x.numpy()})[0], expected, **FLOAT_REORDER)


def test_full_checker_passes_in_a_clean_process(reach_onnx):
    # In this process our schema is registered and the checker would skip the function bodies.
    code = ("import onnx,sys; m=onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); "
            "print('ok')")
    for path in reach_onnx.values():
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
        assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_reach_policy_parity_torch_vs_onnxruntime(untrained_reach, reach_onnx, reach_example):
    model, compressed = untrained_reach
    feed = {name: t.numpy() for name, t in zip(["image", "instruction", "state"], reach_example)}
    for key, torch_model in (("fp32", model), ("binary", compressed.model)):
        session = ort.InferenceSession(str(reach_onnx[key]), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = torch_model(*reach_example).numpy()
        np.testing.assert_allclose(session.run(None, feed)[0], expected, **FLOAT_REORDER)
    binary = onnx.load(str(reach_onnx["binary"]))
    assert sum(node.op_type == "BinaryMatMul" for node in binary.graph.node) == 24  # 4 blocks x 6 Linear
    meta = {p.key: p.value for p in binary.metadata_props}
    assert meta["edgevla_format_version"] == str(formats.FORMAT_VERSION) and "blocks.0.fc1" in meta["edgevla_layers"]
    assert reach_onnx["binary"].stat().st_size < reach_onnx["fp32"].stat().st_size / 5


def test_compress_report_and_caller_model_untouched(untrained_reach):
    model, compressed = untrained_reach
    assert all(isinstance(model.get_submodule(f"blocks.{i}.fc1"), torch.nn.Linear) for i in range(4))
    report = compressed.report
    assert len(report.compressed) == 24
    assert all(0.0 < layer.relative_error < 1.0 for layer in report.compressed)
    kept = {layer.name for layer in report.layers if layer.method == "kept"}
    assert {"head2", "film"} <= kept
    assert report.mean_bits_per_weight() == pytest.approx(1.0 + 16 / 64, abs=0.3)


def test_compress_errors_are_clear():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 4))
    with pytest.raises(ValueError, match="known methods"):
        compress(model, "ternary")
    with pytest.raises(ValueError, match="match no Linear"):
        compress(model, "sign", include=["blocks.*"])
    with pytest.raises(ValueError, match="calibration batch 0 does not fit"):
        compress(model, "sign", calibration=[torch.zeros(1, 3)], include=["1"])
    with pytest.raises(TypeError, match="unknown options"):
        compress(model, "sign", include=["1"], bits=2)
    model[1].weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer '1'.*NaN"):
        compress(model, "sign", include=["1"])


def test_data_dependent_control_flow_is_a_clear_error(tmp_path):
    class Branchy(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # depends on the data: cannot be traced into one graph
                return x * 2
            return x - 1

    with pytest.raises(RuntimeError, match=r"could not export Branchy: data-dependent control flow at .*"
                                           r"test_export.py:\d+ in forward \(`if x.sum\(\) > 0:"):
        export(Branchy(), (torch.randn(2, 3),), tmp_path / "b.onnx")
