"""Dense fp32 MatMul/Conv2d through the linked library (oneDNN on x86_64 hosts) against onnxruntime, the C
binding's refusals, its prepacked-weight cache, and a refused C kernel failing the bundle call."""

import ctypes
import subprocess
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgevla.exporters.onnx_export import export
from edgevla.runtime.engine import TvmPolicy
from edgevla.targets import ckernels, compile_bundle, get_target, verify_bundle
from edgevla.targets import tvm_backend, tvm_dense

HOST = get_target("host")
pytestmark = pytest.mark.skipif(HOST.dense_library_arch is None,
                                reason="the host target has a dense library only on x86_64 (oneDNN)")


class ConvZoo(torch.nn.Module):
    """Every Conv2d form a vision net uses: strided stem, 1x1, depthwise, grouped, dilated, asymmetric kernel."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.pointwise = torch.nn.Conv2d(16, 24, 1)
        self.depthwise = torch.nn.Conv2d(24, 24, 5, padding=2, groups=24, bias=False)
        self.grouped = torch.nn.Conv2d(24, 32, 3, padding=1, groups=4)
        self.dilated = torch.nn.Conv2d(32, 8, 3, padding=2, dilation=2)
        self.odd = torch.nn.Conv2d(8, 8, (1, 3), stride=(1, 2), padding=(0, 1))
        self.head = torch.nn.Linear(8 * 9 * 5, 10)

    def forward(self, x):
        for conv in (self.stem, self.pointwise, self.depthwise, self.grouped, self.dilated, self.odd):
            x = torch.relu(conv(x))
        return self.head(x.flatten(1))


class TokenMlp(torch.nn.Module):
    """Linear layers on 3-D token activations (rows = batch x tokens) and on a 2-D input."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(48, 96)
        self.down = torch.nn.Linear(96, 48, bias=False)
        self.out = torch.nn.Linear(48, 5)

    def forward(self, x):
        h = x + self.down(torch.nn.functional.gelu(self.up(x)))
        return self.out(h.mean(1))


def _export(model, example, path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(model.eval(), (example,), path, input_names=["x"], output_names=["y"])
    return path


@pytest.mark.parametrize("name, model, shape", [("convs", ConvZoo, (2, 3, 18, 18)), ("tokens", TokenMlp, (2, 7, 48))])
def test_library_bundle_matches_onnxruntime(tmp_path, name, model, shape):
    torch.manual_seed(1)
    path = _export(model(), torch.randn(*shape), tmp_path / f"{name}.onnx")
    mod, lowered = tvm_dense.lower_dense_ops(tvm_backend.import_onnx(onnx.load(str(path))))
    expected_ops = {"convs": {"Conv2d": 6, "MatMul": 1}, "tokens": {"MatMul": 3}}[name]
    assert dict(lowered) == expected_ops
    if name == "convs":  # moved to channels-last first, the layout oneDNN's fastest convolutions read
        convs = [gv.name_hint for gv, _ in mod.functions_items() if gv.name_hint.startswith("edgevla_dense_conv2d")]
        assert convs and all(name.startswith("edgevla_dense_conv2d_NHWC") for name in convs), convs
    bundle = compile_bundle(path, "host", tmp_path / "bundle")
    assert bundle.manifest["dense"].startswith("onednn")
    report = verify_bundle(bundle.path)
    assert report.passed, report.line()
    # random inputs too, not only the stored check pair
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    policy = TvmPolicy(bundle)
    for seed in range(3):
        x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(policy.run({"x": x})[0], session.run(None, {"x": x})[0], atol=1e-4, rtol=1e-3)


def test_tvm_dense_path_still_compiles_the_same_graph(tmp_path):
    path = _export(TokenMlp(), torch.randn(1, 3, 48), tmp_path / "m.onnx")
    bundle = compile_bundle(path, "host", tmp_path / "b", dense="tvm")
    assert bundle.manifest["dense"] == "tvm"
    assert verify_bundle(bundle.path).passed
    assert "dnnl" not in subprocess.run(["ldd", str(bundle.library)], capture_output=True, text=True).stdout
    with pytest.raises(ValueError, match="dense must be one of"):
        compile_bundle(path, "host", tmp_path / "c", dense="blas")
    with pytest.raises(ValueError, match="no dense library"):
        compile_bundle(path, "wasm32", tmp_path / "d", dense="library")


@pytest.fixture(scope="module")
def binding():
    objects, link = ckernels.dense_library_objects(HOST.dense_library_arch)
    out = objects[0].with_name("libevla_dense_test.so")
    subprocess.run(["gcc", "-shared", *map(str, objects), "-o", str(out), *link], check=True)
    lib = ctypes.CDLL(str(out))
    lib.evla_dense_matmul_f32.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32,
                                          ctypes.c_int32, ctypes.c_void_p]
    lib.evla_dense_conv2d_f32_flat.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int32] * 19
    lib.evla_dense_library.restype = ctypes.c_char_p
    return lib


def _ptr(a):
    return None if a is None else a.ctypes.data


def test_binding_refuses_bad_calls_and_writes_nothing(binding):
    x, w = np.ones((2, 4), np.float32), np.ones((4, 3), np.float32)
    y = np.full((2, 3), 7.0, np.float32)
    assert binding.evla_dense_matmul_f32(None, 2, _ptr(w), 3, 4, _ptr(y)) == -1  # EVLA_ERR_NULL
    for rows, n, k in ((0, 3, 4), (2, 0, 4), (2, 3, -1)):
        assert binding.evla_dense_matmul_f32(_ptr(x), rows, _ptr(w), n, k, _ptr(y)) == -3  # EVLA_ERR_SHAPE
    xc, wc = np.ones((1, 2, 5, 5), np.float32), np.ones((4, 2, 3, 3), np.float32)
    yc = np.full((1, 4, 5, 5), 7.0, np.float32)
    good = [1, 2, 5, 5, 4, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]  # NCHW
    assert binding.evla_dense_conv2d_f32_flat(_ptr(xc), _ptr(wc), _ptr(yc), *good) == 0
    np.testing.assert_allclose(yc[0, :, 2, 2], 18.0)
    yc[:] = 7.0
    for at, bad in ((5, 4), (17, 3), (9, 0), (15, 0), (11, -1), (18, 2)):  # wrong out_h, groups, stride 0, layout
        args = list(good)
        args[at] = bad
        assert binding.evla_dense_conv2d_f32_flat(_ptr(xc), _ptr(wc), _ptr(yc), *args) == -3, (at, bad)
    assert np.all(y == 7.0) and np.all(yc == 7.0)
    assert binding.evla_dense_library().decode().startswith("onednn ")


def test_new_weights_at_a_reused_address_are_repacked(binding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 40)).astype(np.float32)
    w = rng.normal(size=(40, 24)).astype(np.float32)
    y = np.empty((3, 24), np.float32)
    assert binding.evla_dense_matmul_f32(_ptr(x), 3, _ptr(w), 24, 40, _ptr(y)) == 0
    np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-4)
    w[:] = rng.normal(size=w.shape)  # same address and shape, other weights (a freed and reused buffer)
    assert binding.evla_dense_matmul_f32(_ptr(x), 3, _ptr(w), 24, 40, _ptr(y)) == 0
    np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-4)


def test_a_refused_c_kernel_fails_the_bundle_call(tmp_path):
    """A haar_binary layer whose salient indices are corrupt (duplicated, in range so that onnxruntime still
    runs it): the C kernel returns EVLA_ERR_INDEX and the call raises instead of returning an unwritten output."""
    from edgevla.exporters.compress import compress

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                torch.nn.Linear(64, 8))
    x = torch.randn(4, 64)
    compressed = compress(model, "hbvla", calibration=[(x,)], salient_candidates=(0.05,), max_bits=1.5).model
    path = _export(compressed, x[:1], tmp_path / "h.onnx")
    graph = onnx.load(str(path))
    corrupted = 0
    for init in graph.graph.initializer:
        if init.name.endswith("salient_idx") and init.dims and init.dims[0] > 1:
            a = numpy_helper.to_array(init).copy()
            a[:] = a[0]
            init.CopyFrom(numpy_helper.from_array(a, init.name))
            corrupted += 1
    assert corrupted
    onnx.save(graph, str(tmp_path / "bad.onnx"))
    bundle = compile_bundle(tmp_path / "bad.onnx", "host", tmp_path / "b")
    feed, _ = bundle.check_pair()
    with pytest.raises(Exception, match="evla_haar_gemm_f32_flat refused its arguments"):
        TvmPolicy(bundle).run(feed)
