"""The bundle: a directory holding a compiled policy, its manifest and a reference input/output pair.

One module reads, writes and verifies bundles; compilers (dev side) write them, the robot reads them.
Nothing is unpickled: arrays are .npy files loaded with allow_pickle=False, metadata is JSON, and every
file is listed in the manifest with its sha256, checked before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


class BundleError(ValueError):
    """A bundle that is missing, corrupt, or not meant for this device."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: dict) -> "TensorSpec":
        return TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(d) for d in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(d) for d in self.manifest["outputs"]]

    @property
    def library(self) -> Path:
        return self.path / self.manifest["library"]

    @property
    def target(self) -> dict:
        return self.manifest["target"]

    def check_pair(self) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """The reference input and the onnxruntime output recorded at compile time."""
        check = self.manifest["check"]
        inputs = {name: np.load(self.path / rel, allow_pickle=False) for name, rel in check["inputs"].items()}
        outputs = [np.load(self.path / rel, allow_pickle=False) for rel in check["outputs"]]
        return inputs, outputs

    @property
    def tolerance(self) -> tuple[float, float]:
        """(atol, rtol) within which a run of the bundle must reproduce the reference output."""
        return float(self.manifest["check"]["atol"]), float(self.manifest["check"]["rtol"])


def write_manifest(bundle_dir: Path, manifest: dict) -> Bundle:
    """Add every file's sha256 and write manifest.json last (a bundle without one is incomplete)."""
    bundle_dir = Path(bundle_dir)
    files = sorted(p for p in bundle_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = dict(manifest, schema_version=SCHEMA_VERSION,
                    files={p.relative_to(bundle_dir).as_posix(): sha256_file(p) for p in files})
    tmp = bundle_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(bundle_dir / MANIFEST)
    return Bundle(bundle_dir, manifest)


def read_bundle(bundle_dir: str | Path, *, check_files: bool = True) -> Bundle:
    """Open a bundle, checking its schema and (by default) every file's sha256."""
    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: no {MANIFEST}; create one with `edgevla compile`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path} is not valid JSON ({e}); the bundle is corrupt: compile or copy it again") from e
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{manifest_path}: schema version {manifest.get('schema_version')!r}, this edgevla "
                          f"reads version {SCHEMA_VERSION}; recompile the bundle with this edgevla")
    for key in ("files", "library", "inputs", "outputs", "target", "check"):
        if key not in manifest:
            raise BundleError(f"{manifest_path} lacks {key!r}; the bundle is corrupt: compile it again")
    if check_files:
        for rel, expected in manifest["files"].items():
            path = bundle_dir / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise BundleError(f"manifest lists a path outside the bundle: {rel!r}")
            if not path.is_file():
                raise BundleError(f"bundle file {rel} is missing from {bundle_dir}; copy the whole bundle again")
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(f"bundle file {rel}: sha256 {actual[:16]}... does not match the manifest's "
                                  f"{expected[:16]}...; the file is corrupt or was changed: copy the bundle again")
    return Bundle(bundle_dir, manifest)


def this_machine() -> str:
    """The architecture name a bundle's target must match to run natively here (e.g. x86_64, aarch64)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def check_runs_here(bundle: Bundle) -> None:
    """Refuse a bundle built for another architecture, naming both."""
    arch = bundle.target.get("arch")
    if arch != this_machine():
        raise BundleError(f"bundle built for {arch} ({bundle.target.get('name')}), this device is "
                          f"{this_machine()}: compile with --target matching this device, or flash the bundle "
                          "to the robot it was built for")


def compare_outputs(outputs: list[np.ndarray], expected: list[np.ndarray], atol: float, rtol: float) -> tuple[bool, float]:
    """(every output matches within atol/rtol and has the right shape, largest absolute error)."""
    worst, passed = 0.0, len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        got = np.asarray(got)
        if got.shape != want.shape:
            passed = False
            continue
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0)
        passed &= bool(np.allclose(got, want, atol=atol, rtol=rtol))
    return passed, worst


def pack_bundle_tar(bundle: Bundle, tar_path: Path) -> Path:
    """One uncompressed tar of the bundle's own files (the manifest and what it lists), for transfer."""
    import tarfile

    tar_path = Path(tar_path)
    names = [MANIFEST, *sorted(bundle.manifest["files"])]
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in names:
            info = tar.gettarinfo(str(bundle.path / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(bundle.path / rel, "rb") as f:
                tar.addfile(info, f)
    return tar_path
