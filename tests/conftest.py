"""Shared fixtures: small models exported once per session."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

INPUT_NAMES = ["image", "instruction", "state"]


@pytest.fixture(scope="session")
def reach_example():
    import torch

    rng = np.random.default_rng(0)
    return (torch.from_numpy(rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)),
            torch.tensor([[1, 2, 3, 5]]), torch.from_numpy(rng.normal(size=(1, 8)).astype(np.float32)))


@pytest.fixture(scope="session")
def untrained_reach(reach_example):
    """An untrained reach policy (fixed seed) and its sign-compressed copy: enough for parity tests."""
    import torch

    from edgevla.exporters.compress import compress
    from edgevla.models.reach_vla import ReachVLA

    torch.manual_seed(0)
    model = ReachVLA().eval()
    compressed = compress(model, "sign", calibration=[reach_example], include=["blocks.*"], group_size=64)
    return model, compressed


@pytest.fixture(scope="session")
def reach_onnx(tmp_path_factory, untrained_reach, reach_example) -> dict[str, Path]:
    from edgevla.exporters.onnx_export import export

    model, compressed = untrained_reach
    out = tmp_path_factory.mktemp("onnx")
    paths = {"fp32": out / "reach_fp32.onnx", "binary": out / "reach_binary.onnx"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(model, reach_example, paths["fp32"], input_names=INPUT_NAMES, output_names=["actions"])
        export(compressed.model, reach_example, paths["binary"], input_names=INPUT_NAMES, output_names=["actions"])
    return paths


@pytest.fixture(scope="session")
def reach_bundle(tmp_path_factory, reach_onnx) -> Path:
    from edgevla.targets import compile_bundle

    out = tmp_path_factory.mktemp("bundle") / "reach_binary_host"
    compile_bundle(reach_onnx["binary"], "host", out)
    return out


@pytest.fixture(scope="session")
def reach_nm_onnx(tmp_path_factory, untrained_reach, reach_example) -> Path:
    """The untrained reach policy with 2:4 sparse transformer layers, exported."""
    from edgevla.exporters.compress import compress
    from edgevla.exporters.onnx_export import export

    model, _ = untrained_reach
    sparse = compress(model, "nm", calibration=[reach_example], include=["blocks.*"], n=2, m=4)
    path = tmp_path_factory.mktemp("onnx_nm") / "reach_nm24.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(sparse.model, reach_example, path, input_names=INPUT_NAMES, output_names=["actions"])
    return path


@pytest.fixture(scope="session")
def plain_cnn_onnx(tmp_path_factory) -> Path:
    """A plain (uncompressed) CNN: conv, pooling, dense layers; fixed seed, exported."""
    import torch

    from edgevla.exporters.onnx_export import export

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    path = tmp_path_factory.mktemp("onnx_cnn") / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(model, (torch.randn(2, 1, 8, 8),), path, input_names=["image"], output_names=["logits"])
    return path


@pytest.fixture(scope="session")
def binarized_dense_bytes(reach_onnx) -> int:
    """float32 bytes the binarized layers of the 1-bit reach ONNX would take dequantized: a compiled library
    smaller than this cannot hold a dense copy of them."""
    import onnx

    model = onnx.load(str(reach_onnx["binary"]))
    inits = {i.name: i for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "BinaryMatMul":
            k = next(a.i for a in node.attribute if a.name == "in_features")
            total += int(inits[node.input[1]].dims[0]) * k * 4
    return total
