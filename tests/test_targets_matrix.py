"""compile + verify for every target on the reference policy (1-bit and 2:4) and on a plain CNN."""

from __future__ import annotations

import pytest

from edgevla.targets import compile_bundle, verify_bundle

TARGETS = ["host", "arm64", "wasm32", "jetson-orin"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", ["reach-1bit", "reach-2:4", "plain-cnn"])
def test_compile_and_verify(target, model, reach_onnx, reach_nm_onnx, plain_cnn_onnx, tmp_path):
    """Default kernels: the linked C kernels on host, arm64 and wasm32, TIR (GPU) kernels on jetson-orin."""
    onnx_path = {"reach-1bit": reach_onnx["binary"], "reach-2:4": reach_nm_onnx, "plain-cnn": plain_cnn_onnx}[model]
    bundle = compile_bundle(onnx_path, target, tmp_path / "bundle")
    assert bundle.manifest["kernels"] == ("tir" if target == "jetson-orin" else "c")
    report = verify_bundle(bundle.path)
    print(report.line())
    assert report.passed, report.line()


@pytest.mark.parametrize("target", ["host", "arm64", "wasm32"])
@pytest.mark.parametrize("model", ["reach-1bit", "reach-2:4"])
def test_compile_and_verify_with_tir_kernels_only(target, model, reach_onnx, reach_nm_onnx, tmp_path):
    onnx_path = {"reach-1bit": reach_onnx["binary"], "reach-2:4": reach_nm_onnx}[model]
    bundle = compile_bundle(onnx_path, target, tmp_path / "bundle", kernels="tir")
    assert bundle.manifest["kernels"] == "tir"
    report = verify_bundle(bundle.path)
    assert report.passed, report.line()


def test_c_kernels_need_a_target_that_has_them(reach_onnx, tmp_path):
    with pytest.raises(ValueError, match="jetson-orin has no kernels_arm build"):
        compile_bundle(reach_onnx["binary"], "jetson-orin", tmp_path / "b", kernels="c")


def test_ci_example_workflow_uses_real_commands_and_targets():
    """examples/ci/compile-and-verify.yml: every edgevla command parses and every matrix target exists."""
    import re
    from pathlib import Path

    from edgevla.cli import build_parser
    from edgevla.targets import get_target

    text = (Path(__file__).resolve().parents[1] / "examples" / "ci" / "compile-and-verify.yml").read_text()
    targets = re.search(r"target: \[([^\]]+)\]", text).group(1).replace(" ", "").split(",")
    for target in targets:
        get_target(target)
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("edgevla ")]
    assert len(commands) >= 3
    parser = build_parser()
    for target in targets:
        for command in commands:
            parser.parse_args(command.replace("${{ matrix.target }}", target).split()[1:])
