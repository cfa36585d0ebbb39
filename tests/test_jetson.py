"""jetson-orin: the library builds with GPU kernels, its CUDA source compiles for sm_87; a GPU run when present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgevla.runtime.bundle import read_bundle
from edgevla.targets import compile_bundle, verify_bundle
from edgevla.targets.jetson import KERNEL_SOURCE, count_kernels

ROOT = Path(__file__).resolve().parents[1]


def test_jetson_bundle_builds_gpu_kernels_that_nvcc_compiles_for_sm87(reach_nm_onnx, tmp_path):
    bundle = compile_bundle(reach_nm_onnx, "jetson-orin", tmp_path / "jetson")
    manifest = read_bundle(bundle.path).manifest
    assert manifest["target"]["device"] == "cuda" and manifest["target"]["arch"] == "aarch64"
    assert count_kernels((bundle.path / KERNEL_SOURCE).read_text()) > 0
    report = verify_bundle(bundle.path)
    assert report.passed, report.line()
    assert "nvcc sm_87 compiles" in report.how and "aarch64 host code yes" in report.how


def _gpu_present() -> bool:
    import tvm

    return bool(tvm.runtime.cuda(0).exist)


@pytest.mark.skipif(not _gpu_present(), reason="no CUDA GPU on this machine: the GPU run needs one (the static "
                                                 "Jetson checks above still run)")
def test_gpu_build_runs_and_matches_onnxruntime(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
