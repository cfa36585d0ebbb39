"""The target interface and its registry: one small class per target, looked up by name."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgevla.runtime.bundle import Bundle, compare_outputs


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How a target builds a bundle's library (compile_bundle fills it from its arguments)."""
    c_kernels: bool = False          # packed formats with a kernels_arm C kernel call it instead of a TIR kernel
    int8_activations: bool = False   # with c_kernels: binary/haar_binary quantize activation rows to int8
    dense_library: bool = False      # fp32 MatMul/Conv2d with constant weights call the target's dense library
    tuning: object = None            # targets.tune.TuneSettings: MetaSchedule first (None: the default schedules)


@dataclass(frozen=True)
class VerifyReport:
    target: str
    how: str  # where the bundle ran: "natively", "qemu-aarch64", ...
    max_abs_error: float
    atol: float
    rtol: float
    passed: bool

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        if self.max_abs_error != self.max_abs_error:  # NaN: checked statically, not run here
            return f"{verdict} {self.target} ({self.how})"
        return (f"{verdict} {self.target} ({self.how}): max |error| {self.max_abs_error:.3g} "
                f"(atol {self.atol:g}, rtol {self.rtol:g})")


class Target(abc.ABC):
    name: str = ""
    arch: str = ""  # machine name the library runs on (as edgevla.runtime.bundle.this_machine reports)
    description: str = ""

    @abc.abstractmethod
    def tvm_target(self) -> dict | str:
        """The TVM target as a dict or a TVM tag name (0.27 rejects CLI-style target strings)."""

    # The kernels_arm build linked into this target's libraries, or None when only TIR kernels are used.
    c_kernel_arch: str | None = None
    # The architecture whose dense library (ckernels.DENSE_LIBRARIES) runs this target's fp32 MatMul/Conv2d,
    # or None when TVM compiles them itself.
    dense_library_arch: str | None = None

    @abc.abstractmethod
    def build(self, model: onnx.ModelProto, out_dir: Path, options: BuildOptions) -> Path:
        """Compile `model` into a library inside out_dir; returns its path. With `options.c_kernels`, packed formats
        that have a kernels_arm C kernel call it (linked into the library) instead of their TIR kernel (and with
        `int8_activations` their int8-activation form). With `options.tuning` (targets.tune.TuneSettings),
        kernels are scheduled by MetaSchedule first and the tuning report is written next to the library
        (targets that cannot be tuned refuse it). `options.dense_library` is only set where
        `dense_library_arch` is: fp32 MatMul/Conv2d with constant weights then call that library."""

    def refuse_tuning(self, tuning, why: str) -> None:
        if tuning is not None:
            raise ValueError(f"target {self.name} cannot be tuned: {why}")

    @abc.abstractmethod
    def run_check(self, bundle: Bundle, inputs: dict[str, np.ndarray]) -> tuple[list[np.ndarray], str]:
        """Run the bundle on `inputs` as closely to the device as this machine allows; (outputs, how)."""

    def verify(self, bundle: Bundle) -> VerifyReport:
        inputs, expected = bundle.check_pair()
        outputs, how = self.run_check(bundle, inputs)
        atol, rtol = bundle.tolerance
        passed, worst = compare_outputs(outputs, expected, atol, rtol)
        return VerifyReport(self.name, how, worst, atol, rtol, passed)


TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    TARGETS[target.name] = target
    return target


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; known targets: {sorted(TARGETS)}") from None
