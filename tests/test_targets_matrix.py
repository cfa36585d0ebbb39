"""compile + verify for every target on the reference policy (1-bit and 2:4) and on a plain CNN."""

from __future__ import annotations

import pytest

from edgevla.targets import compile_bundle, verify_bundle

TARGETS = ["host", "arm64", "jetson-orin"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", ["reach-1bit", "reach-2:4", "plain-cnn"])
def test_compile_and_verify(target, model, reach_onnx, reach_nm_onnx, plain_cnn_onnx, tmp_path):
    onnx_path = {"reach-1bit": reach_onnx["binary"], "reach-2:4": reach_nm_onnx, "plain-cnn": plain_cnn_onnx}[model]
    bundle = compile_bundle(onnx_path, target, tmp_path / "bundle")
    report = verify_bundle(bundle.path)
    print(report.line())
    assert report.passed, report.line()
