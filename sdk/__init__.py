"""edgevla: compressed VLA policies from PyTorch to a robot.

The public API is loaded lazily so that `import edgevla.runtime` on a robot pulls in neither torch nor the
TVM compiler.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "compress": ("edgevla.exporters.compress", "compress"),
    "export": ("edgevla.exporters.onnx_export", "export"),
    "compile": ("edgevla.targets", "compile_bundle"),
    "load": ("edgevla.runtime.engine", "load_policy"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'edgevla' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
