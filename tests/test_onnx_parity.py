"""Backend-ops parity for every exportable format: torch eager vs onnxruntime vs onnx.reference.

Each case packs a random layer with the format's own method, exports a one-layer model, and runs the same
inputs everywhere. A new format or op adds its cases here.
"""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from edgevla.exporters import methods
from edgevla.exporters.calibration import collect_layer_stats
from edgevla.exporters.onnx_bodies import OPS
from edgevla.exporters.onnx_export import export
from edgevla.exporters.packed_layers import packed_linear
from edgevla.runtime import formats

# Named tolerances: float32 math reordered (eager decode vs ONNX body) on O(1) activations.
TOLERANCE = {"atol": 2e-5, "rtol": 2e-4}

PACKERS = {
    "binary": lambda w, s: methods.sign(w, s, group_size=64),
    "nm": lambda w, s: methods.nm(w, s, n=2, m=4, criterion="sparsegpt"),
    "nm_1_4": lambda w, s: methods.nm(w, s, n=1, m=4),
    "nm_4_8": lambda w, s: methods.nm(w, s, n=4, m=8, criterion="wanda"),
    "haar_binary": lambda w, s: methods.hbvla(w, s, max_bits=4.0, salient_candidates=(0.1,)),  # >= 1 salient
    "binary_split": lambda w, s: methods.billm(w, s, block_size=32),
    "dense_sparse": lambda w, s: methods.dense_sparse(w, s, atoms=6, nonzeros=2, iterations=2),
    "group_sparse": lambda w, s: methods.group_sparse(w, s, group=4, sparsity=0.5),
}
SHAPES = [(7, 40), (16, 70), (5, 13)]  # (out, in): odd sizes, K not a multiple of any group


def one_layer(case, n, k, seed=0):
    torch.manual_seed(seed)
    dense = torch.nn.Linear(k, n)
    x = torch.randn(64, k)
    stats = collect_layer_stats(torch.nn.Sequential(dense), "0", [x], device=torch.device("cpu"))
    packed = PACKERS[case](dense.weight.detach().double(), stats)
    return torch.nn.Sequential(packed_linear(packed, dense.bias, method=case), torch.nn.Tanh()).eval(), packed


@pytest.mark.parametrize("case", sorted(PACKERS))
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("dynamic", [False, True])
def test_format_parity(tmp_path, case, n, k, dynamic):
    model, packed = one_layer(case, n, k)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export(model, (torch.randn(3, k),), path, dynamic_batch=dynamic, input_names=["x"],
                       output_names=["y"])
    op_name = OPS[packed.format][0]
    assert [node.op_type for node in proto.graph.node if node.domain == "ai.edgevla"] == [op_name]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = ReferenceEvaluator(proto)
    for batch in ([1, 3, 5] if dynamic else [3]):
        x = torch.randn(batch, k)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, **TOLERANCE)
        np.testing.assert_allclose(reference.run(None, {"x": x.numpy()})[0], expected, **TOLERANCE)
    # and eager agrees with the format's numpy reference
    x = np.random.default_rng(1).normal(size=(2, k)).astype(np.float32)
    ref = np.tanh(formats.get_format(packed.format).matmul_ref(x, packed) + model[0].bias.detach().numpy())
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), ref, **TOLERANCE)


def run_tvm_host(path, inputs: dict[str, np.ndarray], *, c_kernels: bool = False) -> np.ndarray:
    """Compile an ONNX file with the TVM host target (edgevla's packed kernels) and run it once; with
    `c_kernels`, the formats that have a kernels_arm C kernel call it (linked into the exported library)."""
    import tvm
    from tvm.runtime import vm as tvm_vm

    from edgevla.targets import ckernels, tvm_backend

    executable = tvm_backend.compile_module(tvm_backend.import_onnx(onnx.load(str(path)), c_kernels=c_kernels),
                                            {"kind": "llvm"})
    library = path.with_suffix(".so")
    tvm_backend.export_library(executable, library, addons=ckernels.link_objects("x86_64") if c_kernels else None)
    machine = tvm_vm.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.runtime.cpu(0))
    return machine["main"](*[tvm.runtime.tensor(v) for v in inputs.values()]).numpy()


def exported_layer(tmp_path, case, n, k):
    """One packed layer exported with a static batch of 3: (onnx path, packed weight, input, torch output)."""
    model, packed = one_layer(case, n, k)
    x = torch.randn(3, k)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(model, (x,), path, input_names=["x"], output_names=["y"])
    with torch.no_grad():
        return path, packed, x.numpy(), model(x).numpy()


@pytest.mark.parametrize("case", ["binary", "nm", "nm_1_4", "nm_4_8", "haar_binary", "group_sparse"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_tvm_host_with_linked_c_kernels(tmp_path, case, n, k):
    """The same layers through TVM calling the kernels_arm C kernels (call_extern), against torch eager."""
    path, _, x, expected = exported_layer(tmp_path, case, n, k)
    np.testing.assert_allclose(run_tvm_host(path, {"x": x}, c_kernels=True), expected, **TOLERANCE)


@pytest.mark.parametrize("case", sorted(PACKERS))
@pytest.mark.parametrize("n,k", SHAPES)
def test_tvm_host_kernel_parity(tmp_path, case, n, k):
    """Every format's TIR kernel (host target) against torch eager, and it never holds a dense float weight."""
    from edgevla.targets import tvm_backend

    path, packed, x, expected = exported_layer(tmp_path, case, n, k)
    np.testing.assert_allclose(run_tvm_host(path, {"x": x}), expected, **TOLERANCE)
    mod = tvm_backend.import_onnx(onnx.load(str(path)))
    assert any(gv.name_hint.startswith(f"edgevla_{packed.format}_matmul") for gv, _ in mod.functions_items())
    dense = [c for c in tvm_backend.relax_constants(mod) if c.dtype.startswith("float") and c.shape == (n, k)]
    assert not dense, f"a dense float [{n}, {k}] weight reached the compiled module: {dense}"


def test_every_function_passes_the_full_checker_in_a_clean_process(tmp_path):  # matmul and conv forms
    import subprocess
    import sys

    paths = []
    for case in ("binary", "nm", "haar_binary", "binary_split", "dense_sparse", "group_sparse"):
        model, _ = one_layer(case, 8, 40)
        path = tmp_path / f"{case}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export(model, (torch.randn(2, 40),), path)
        paths.append(str(path))
    from edgevla.exporters.compress import compress

    convnet = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3), torch.nn.Conv2d(8, 2, 1)).eval()
    for method in ("sign", "hbvla", "nm", "dense_sparse", "group_sparse", "billm"):
        options = {"max_bits": 3.0} if method == "hbvla" else {}
        packed = compress(convnet, method, calibration=[torch.randn(2, 3, 8, 8)], include=["1"], **options).model
        path = tmp_path / f"conv_{method}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export(packed, (torch.randn(1, 3, 8, 8),), path)
        paths.append(str(path))
    code = "import onnx,sys\nfor p in sys.argv[1:]: onnx.checker.check_model(onnx.load(p), full_check=True)\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("method,options", [("sign", {}), ("billm", {}), ("hbvla", {}), ("nm", {"criterion": "sparsegpt"}),
                                            ("dense_sparse", {"iterations": 2}), ("group_sparse", {}),
                                            ("budget", {"bits_per_weight": 3.0})])
def test_reach_policy_exports_with_every_method(tmp_path, untrained_reach, reach_example, method, options):
    from edgevla.exporters.compress import compress
    from edgevla.exporters.inspect_onnx import inspect_file

    model, _ = untrained_reach
    calibration = [tuple(t.repeat(4, *([1] * (t.dim() - 1))) for t in reach_example)]
    compressed = compress(model, method, calibration=calibration, include=["blocks.*"], **options).model
    path = tmp_path / f"reach_{method}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(compressed, reach_example, path, input_names=["image", "instruction", "state"], output_names=["a"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: t.numpy() for name, t in zip(["image", "instruction", "state"], reach_example)}
    with torch.no_grad():
        expected = compressed(*reach_example).numpy()
    np.testing.assert_allclose(session.run(None, feed)[0], expected, atol=1e-4, rtol=1e-3)
    assert "24 compressed layers" in inspect_file(path)


def test_onnxruntime_int4_path_fuses_to_matmulnbits(tmp_path):
    from edgevla.exporters.packed_layers import BinaryLinear

    torch.manual_seed(0)
    dense = torch.nn.Linear(128, 24)
    packed = formats.pack_binary(dense.weight.detach().numpy(), group_size=32)
    model = torch.nn.Sequential(BinaryLinear(packed, dense.bias, method="sign")).eval()
    x = torch.randn(3, 128)
    path = tmp_path / "int4.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(model, (x,), path, onnxruntime_int4=True, input_names=["x"])
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], model(x).numpy(), **TOLERANCE)
    assert "MatMulNBits" in [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    bad = torch.nn.Sequential(BinaryLinear(formats.pack_binary(dense.weight.detach().numpy()[:, :100], group_size=32),
                                           dense.bias, method="sign"))
    with pytest.raises(ValueError, match="multiple of group_size"):
        export(bad, (torch.randn(1, 100),), tmp_path / "bad.onnx", onnxruntime_int4=True)


@pytest.mark.parametrize("method,options", [("sign", {"group_size": 72}), ("billm", {"block_size": 72}),
                                            ("hbvla", {"max_bits": 3.0}), ("nm", {"criterion": "sparsegpt"}),
                                            ("dense_sparse", {"atoms": 8, "nonzeros": 2, "iterations": 2}),
                                            ("group_sparse", {})])
def test_packed_conv2d_parity(tmp_path, method, options):
    from edgevla.exporters.compress import compress
    from edgevla.exporters.onnx_bodies import conv_op_name

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 12, 3, stride=2, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(12, 4, 1)).eval()
    batches = [torch.randn(4, 3, 10, 10)]
    compressed = compress(model, method, calibration=batches, include=["2"], **options).model
    path = tmp_path / "conv.onnx"
    x = torch.randn(2, 3, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export(compressed, (x,), path, input_names=["x"])
    custom = [n.op_type for n in proto.graph.node if n.domain == "ai.edgevla"]
    assert len(custom) == 1 and custom[0] == conv_op_name(OPS[compressed[2].format_name][0])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = compressed(x).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, **TOLERANCE)
    np.testing.assert_allclose(ReferenceEvaluator(proto).run(None, {"x": x.numpy()})[0], expected, **TOLERANCE)
    np.testing.assert_allclose(run_tvm_host(path, {"x": x.numpy()}), expected, **TOLERANCE)  # im2col + kernel
