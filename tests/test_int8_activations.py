"""Bundles compiled with int8 activations: the 1-bit layers quantize each activation row inside their C kernel;
checked against onnxruntime (fp32 activations) within the named int8 tolerance, on host and arm64 (qemu)."""

import warnings

import numpy as np
import onnx
import pytest
import torch

from edgevla.exporters.compress import compress
from edgevla.exporters.onnx_export import export
from edgevla.runtime.engine import TvmPolicy
from edgevla.targets import compile_bundle, verify_bundle
from edgevla.targets import tvm_backend
from edgevla.targets.compile import TOLERANCE_INT8_ACTIVATIONS


def _kernel_calls(mod) -> str:
    return "\n".join(func.script() for _, func in mod.functions_items() if "call_extern" in func.script())


def test_int8_bundle_of_the_reach_policy_matches_onnxruntime(reach_onnx, tmp_path):
    model = onnx.load(str(reach_onnx["binary"]))
    calls = _kernel_calls(tvm_backend.import_onnx(model, c_kernels=True, int8_activations=True))
    assert "evla_b1_gemm_i8_flat" in calls and "evla_b1_gemm_f32_flat" not in calls
    bundle = compile_bundle(reach_onnx["binary"], "host", tmp_path / "b", activations="int8")
    assert bundle.manifest["activations"] == "int8"
    assert bundle.tolerance == (TOLERANCE_INT8_ACTIVATIONS["atol"], TOLERANCE_INT8_ACTIVATIONS["rtol"])
    report = verify_bundle(bundle.path)
    assert report.passed, report.line()
    feed, expected = bundle.check_pair()
    got = TvmPolicy(bundle).run(feed)[0]
    # one int8 step per input, compounded over 4 blocks: well inside the tolerance, and not exact either
    relative = np.abs(got - expected[0]).max() / np.abs(expected[0]).max()
    assert 0 < relative < 0.02, relative


@pytest.fixture(scope="module")
def hbvla_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 128), torch.nn.GELU(), torch.nn.Linear(128, 128),
                                torch.nn.GELU(), torch.nn.Linear(128, 96), torch.nn.Linear(96, 6)).eval()
    tokens = torch.randn(8, 12, 96)
    compressed = compress(model, "hbvla", calibration=[(tokens,)], salient_candidates=(0.05,), max_bits=1.5)
    assert {layer.method for layer in compressed.report.compressed} == {"hbvla"}
    path = tmp_path_factory.mktemp("hbvla") / "hbvla.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(compressed.model, (tokens[:1],), path, input_names=["tokens"], output_names=["out"])
    assert sum(node.op_type == "HaarBinaryMatMul" for node in onnx.load(str(path)).graph.node) >= 2
    return path


@pytest.mark.parametrize("target", ["host", "arm64"])
def test_int8_haar_binary_bundle_matches_onnxruntime(hbvla_onnx, tmp_path, target):
    calls = _kernel_calls(tvm_backend.import_onnx(onnx.load(str(hbvla_onnx)), c_kernels=True, int8_activations=True))
    assert "evla_haar_gemm_i8_flat" in calls
    bundle = compile_bundle(hbvla_onnx, target, tmp_path / "b", activations="int8")
    report = verify_bundle(bundle.path)
    assert report.passed, report.line()
    assert report.max_abs_error > 0  # the quantization is really there


def test_int8_activations_are_refused_where_no_c_kernel_runs(reach_onnx, tmp_path):
    with pytest.raises(ValueError, match="activations must be one of"):
        compile_bundle(reach_onnx["binary"], "host", tmp_path / "a", activations="int4")
    with pytest.raises(ValueError, match="kernels=tir excludes"):
        compile_bundle(reach_onnx["binary"], "host", tmp_path / "b", kernels="tir", activations="int8")
    with pytest.raises(ValueError, match="does not link"):
        compile_bundle(reach_onnx["binary"], "jetson-orin", tmp_path / "c", activations="int8")
    with pytest.raises(ValueError, match="need the C kernels"):
        tvm_backend.import_onnx(onnx.load(str(reach_onnx["binary"])), int8_activations=True)


@pytest.mark.parametrize("activations", ["fp32", "int8"])
def test_many_token_rows_in_one_kernel_call_match_onnxruntime(tmp_path, activations):
    """40 token rows of 1-bit layers: on AVX-512 the flat entry hands all rows to the token-batch tiles at once
    (elsewhere 16 at a time); either way the bundle matches onnxruntime."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(72, 200), torch.nn.ReLU(), torch.nn.Linear(200, 136),
                                torch.nn.ReLU(), torch.nn.Linear(136, 72), torch.nn.Linear(72, 5)).eval()
    tokens = torch.randn(1, 40, 72)
    compressed = compress(model, "sign", calibration=[(tokens,)], group_size=8).model
    path = tmp_path / "tokens.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(compressed, (tokens,), path, input_names=["tokens"], output_names=["out"])
    bundle = compile_bundle(path, "host", tmp_path / "b", activations=activations)
    report = verify_bundle(bundle.path)
    assert report.passed, report.line()
