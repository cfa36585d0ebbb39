"""Compilation targets (dev side): one module per target behind `base.Target`, looked up by name."""

from .base import TARGETS, Target, VerifyReport, get_target, register_target
from . import arm64, host, jetson, wasm32  # noqa: F401  (register the targets)
from .compile import compile_bundle, verify_bundle

__all__ = ["TARGETS", "Target", "VerifyReport", "get_target", "register_target", "compile_bundle", "verify_bundle"]
