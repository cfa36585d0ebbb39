"""An aarch64 Python with the TVM runtime, run under qemu-aarch64: how `arm64` bundles are verified here.

The sysroot is Debian's arm64 python3.11 and the libraries it needs (apt-get download + dpkg -x, no
installation into the system), plus PyPI's aarch64 wheels of numpy, apache-tvm and apache-tvm-ffi (pip
download for another platform). It is built once into the cache (EDGEVLA_CACHE, default ~/.cache/edgevla)
and reused; `python -m edgevla.targets.emulate.arm64_python` builds it ahead of time (the test command
does). Inside, TVM_USE_RUNTIME_LIB=1 loads only libtvm_runtime, as on a robot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEBIAN_PACKAGES = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libstdc++6",
                   "libgcc-s1", "zlib1g", "libffi8", "libexpat1", "libssl3"]
WHEELS = ["numpy==2.4.6", "apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.15.post2", "ml_dtypes==0.6.0",
          "typing_extensions==4.16.0"]
LAYOUT_VERSION = "1"  # bump when the package lists change so caches rebuild


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEVLA_CACHE", Path.home() / ".cache" / "edgevla")) / f"arm64-python-{LAYOUT_VERSION}"


def _run(command: list[str], what: str, **kwargs) -> None:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(command[:4])} ...): {result.stderr.strip()[-1500:]}")


def ensure_sysroot() -> Path:
    """The cached sysroot (root/ and site/), built on first use. Needs apt-get (root) and PyPI the first time."""
    home = cache_dir()
    if (home / "ready").is_file():
        return home
    if shutil.which("qemu-aarch64") is None:
        raise RuntimeError("qemu-aarch64 is not installed: run scripts/setup.sh (as root it installs Debian's "
                           "qemu-user) or apt-get install qemu-user")
    if os.geteuid() != 0:
        raise RuntimeError(f"the arm64 Python sysroot is not in {home} and building it needs apt-get as root; "
                           "run scripts/setup.sh as root once, or copy a built cache there")
    staging = Path(tempfile.mkdtemp(prefix="arm64-python-", dir=home.parent if home.parent.exists() else None))
    try:
        debs = staging / "debs"
        debs.mkdir()
        architectures = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout
        if "arm64" not in architectures.split():
            _run(["dpkg", "--add-architecture", "arm64"], "adding the arm64 architecture")
            _run(["apt-get", "update", "-q"], "apt-get update")
        try:
            _run(["apt-get", "download", *[f"{p}:arm64" for p in DEBIAN_PACKAGES]], "apt-get download", cwd=debs)
        except RuntimeError:
            _run(["apt-get", "update", "-q"], "apt-get update")
            _run(["apt-get", "download", *[f"{p}:arm64" for p in DEBIAN_PACKAGES]], "apt-get download", cwd=debs)
        root = staging / "root"
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(root)], f"unpacking {deb.name}")
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:",
              "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11", "--implementation", "cp",
              "--abi", "cp311", "--target", str(staging / "site"), *WHEELS], "pip install of the aarch64 wheels")
        shutil.rmtree(debs)
        (staging / "ready").write_text(LAYOUT_VERSION)
        if home.exists():
            shutil.rmtree(home)
        home.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(home)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return home


def runtime_tree(dest: Path) -> Path:
    """A device-style install of the edgevla runtime: dest/edgevla/{__init__.py, runtime/...} (no dev side)."""
    import edgevla.runtime

    package = dest / "edgevla"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""edgevla runtime, as installed on a device."""\n')
    shutil.copytree(Path(edgevla.runtime.__file__).parent, package / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    return dest


def run_python(script: str, *, extra_path: list[Path] = (), timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Run `script` with the aarch64 Python under qemu-aarch64."""
    home = ensure_sysroot()
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1",
               PYTHONPATH=os.pathsep.join([*(str(p) for p in extra_path), str(home / "site")]))
    env.pop("PYTHONHOME", None)
    command = ["qemu-aarch64", "-L", str(home / "root"), str(home / "root" / "usr" / "bin" / "python3.11"),
               "-c", script]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)


if __name__ == "__main__":
    print(f"arm64 Python sysroot ready in {ensure_sysroot()}")
