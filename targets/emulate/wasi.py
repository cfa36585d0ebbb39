"""Run a wasm32-wasi program here: in wasmtime (its Python package) or in node (node:wasi).

Both get the same arguments and one preopened directory, mapped to /work inside the guest; the program's
exit status and stdout come back.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

GUEST_DIR = "/work"

_NODE_LAUNCHER = r"""
const { WASI } = require('node:wasi');
const fs = require('node:fs');
const [modulePath, hostDir, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: ['runner', ...args], preopens: { '/work': hostDir },
                        returnOnExit: true });
(async () => {
  const module = await WebAssembly.compile(fs.readFileSync(modulePath));
  const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
  process.exitCode = wasi.start(instance);
})();
"""


def run_wasmtime(module: Path, args: list[str], host_dir: Path, timeout_s: float = 300) -> tuple[int, str]:
    from wasmtime import Engine, ExitTrap, Linker, Module, Store, WasiConfig

    engine = Engine()
    store = Store(engine)
    with tempfile.TemporaryDirectory() as tmp:
        stdout = Path(tmp) / "stdout"
        config = WasiConfig()
        config.argv = ["runner", *args]
        config.preopen_dir(str(host_dir), GUEST_DIR)
        config.stdout_file = str(stdout)
        config.inherit_stderr()
        store.set_wasi(config)
        linker = Linker(engine)
        linker.define_wasi()
        instance = linker.instantiate(store, Module.from_file(engine, str(module)))
        try:
            instance.exports(store)["_start"](store)
            code = 0
        except ExitTrap as e:
            code = e.code
        return code, stdout.read_text()


def run_node(module: Path, args: list[str], host_dir: Path, timeout_s: float = 300) -> tuple[int, str]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed (Debian package nodejs) and is needed to run wasm32 in node")
    with tempfile.TemporaryDirectory() as tmp:
        launcher = Path(tmp) / "run.js"
        launcher.write_text(_NODE_LAUNCHER)
        result = subprocess.run([node, "--no-warnings", str(launcher), str(module), str(host_dir), *args],
                                capture_output=True, text=True, timeout=timeout_s)
    return result.returncode, result.stdout
