"""The arm64 targets: cross-compiled with TVM + the aarch64 GNU toolchain, verified under qemu-aarch64."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgevla.runtime.bundle import BundleError, read_bundle
from edgevla.runtime.engine import load_policy
from edgevla.targets import compile_bundle, get_target, verify_bundle

ROOT = Path(__file__).resolve().parents[1]
EM_AARCH64 = 183  # ELF e_machine of AArch64


@pytest.fixture(scope="module")
def arm64_bundle(reach_onnx, tmp_path_factory):
    return compile_bundle(reach_onnx["binary"], "arm64", tmp_path_factory.mktemp("arm64") / "reach_binary_arm64")


def test_arm64_bundle_matches_onnxruntime_under_qemu(arm64_bundle):
    report = verify_bundle(arm64_bundle.path)
    assert report.passed, report.line()
    assert report.how.startswith("qemu-aarch64") and report.max_abs_error < 1e-4


@pytest.mark.parametrize("target", ["host", "arm64"])
def test_library_is_for_its_target_and_holds_packed_weights(target, reach_bundle, arm64_bundle, binarized_dense_bytes):
    bundle = read_bundle(reach_bundle) if target == "host" else arm64_bundle
    library = bundle.library.read_bytes()
    assert library[:4] == b"\x7fELF"
    machine = int.from_bytes(library[18:20], "little")
    assert (machine == EM_AARCH64) == (target == "arm64")
    # Had any binarized layer been dequantized to float32, its dense copy alone would exceed this library.
    dense = binarized_dense_bytes
    assert len(library) < dense, f"{target} library {len(library):,} B >= dense binarized layers {dense:,} B"


def test_arm64_bundle_is_refused_on_this_x86_machine(arm64_bundle):
    with pytest.raises(BundleError, match="bundle built for aarch64 \\(arm64\\), this device is x86_64"):
        load_policy(arm64_bundle.path)


def test_named_board_variants():
    assert get_target("arm64-rpi5").tvm_target()["mcpu"] == "cortex-a76"
    assert get_target("arm64-orin-cpu").tvm_target()["mcpu"] == "cortex-a78"
    assert "mcpu" not in get_target("arm64").tvm_target()


def test_digits_example_compresses_compiles_and_keeps_accuracy_under_qemu(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "digits_arm64.py"), "--quick", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = {line.split("  ")[0].strip(): line for line in result.stdout.splitlines() if "%" in line}
    device = [line for key, line in lines.items() if "qemu-aarch64" in key]
    assert device, result.stdout
    accuracy = float(device[0].split("%")[0].split()[-1])
    assert accuracy > 80.0, device[0]  # a trained CNN; 10 classes
