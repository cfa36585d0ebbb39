"""Device side of `edgevla flash`: install a bundle atomically, keep previous versions, roll back.

Layout under a deploy root ROOT (a directory on the robot, or a mounted SD card):

    ROOT/bundles/<id>/       installed bundles; id = <target>-<first 12 hex digits of the manifest's sha256>
    ROOT/staging/            uploads and unpacked bundles in progress: incomplete by definition, removed by
                             the next install
    ROOT/current             symlink -> bundles/<id>, replaced in one rename (atomic on POSIX)
    ROOT/history.json        the stack of activations (newest last); rollback pops it

Everything before the switch happens in staging/: unpack (every tar member checked first), verify every
sha256, refuse a bundle for another architecture, run the bundle's self-check (its reference input must
reproduce its reference output within its tolerance). Only then does `current` move. A failure at any
point, a killed upload or a full disk leaves `current` where it was.

Run on the device as `python -m edgevla.runtime.deploy {info,install,rollback,check} ROOT ...`; each prints
one JSON object (or {"error": ...} with exit status 2).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import tarfile
import time
import uuid
from pathlib import Path, PurePosixPath

from .bundle import MANIFEST, Bundle, BundleError, check_runs_here, compare_outputs, read_bundle, this_machine

SPACE_MARGIN_BYTES = 1 << 20  # kept free beyond what a bundle needs


# -- facts about the device -------------------------------------------------------------------------------
def _cpu_features() -> list[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return sorted(value.split())
    return []


def _memory() -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(value.split()[0]) * 1024
    return {"total_bytes": out.get("MemTotal", 0), "available_bytes": out.get("MemAvailable", 0)}


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("edgevla", "numpy", "apache-tvm", "apache-tvm-ffi", "onnxruntime"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def free_bytes(root: Path) -> int:
    probe = Path(root)
    while not probe.exists():
        probe = probe.parent
    stats = os.statvfs(probe)
    return stats.f_bavail * stats.f_frsize


def device_info(root: str | Path) -> dict:
    root = Path(root)
    return {"arch": this_machine(), "cpu_features": _cpu_features(), "memory": _memory(),
            "root": str(root), "free_bytes": free_bytes(root), "versions": _versions(),
            "current": current_id(root), "history": _history(root)}


# -- layout ---------------------------------------------------------------------------------------------
def current_id(root: Path) -> str | None:
    link = Path(root) / "current"
    if not link.is_symlink():
        return None
    return PurePosixPath(os.readlink(link)).name


def _history(root: Path) -> list[str]:
    path = Path(root) / "history.json"
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["activations"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BundleError(f"{path} is corrupt ({e}); fix or delete it (current stays {current_id(root)})") from e


def _write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _switch(root: Path, bundle_id: str) -> None:
    """Point `current` at bundles/<bundle_id> with one rename."""
    tmp = root / f".current.{uuid.uuid4().hex}"
    os.symlink(f"bundles/{bundle_id}", tmp)
    os.replace(tmp, root / "current")
    _fsync_dir(root)


@contextlib.contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BundleError(f"another flash or rollback is running on {root}; wait for it to finish") from None
        yield


# -- unpacking --------------------------------------------------------------------------------------------
def check_members(members: list[tarfile.TarInfo]) -> int:
    """Refuse anything but plain files and directories with relative, non-escaping names; returns total size."""
    total = 0
    for member in members:
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or member.name.startswith(("/", "\\")) or "\\" in member.name:
            raise BundleError(f"refusing tarball: member {member.name!r} points outside the bundle")
        if member.issym() or member.islnk():
            raise BundleError(f"refusing tarball: member {member.name!r} is a link (to {member.linkname!r}); "
                              "bundles hold plain files only")
        if not (member.isfile() or member.isdir()):
            raise BundleError(f"refusing tarball: member {member.name!r} is not a plain file or directory")
        total += member.size
    return total


def safe_extract(tar_path: Path, dest: Path) -> None:
    """Unpack a bundle tarball into the new directory `dest`, after checking every member."""
    try:
        with tarfile.open(tar_path, "r:") as tar:
            members = tar.getmembers()
            size = check_members(members)
            if size + SPACE_MARGIN_BYTES > free_bytes(dest.parent):
                raise BundleError(f"not enough space to unpack: the bundle needs {size:,} bytes, "
                                  f"{free_bytes(dest.parent):,} are free under {dest.parent}")
            dest.mkdir(parents=True)
            for member in members:
                target = dest / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with open(target, "xb") as out:
                    shutil.copyfileobj(source, out)
                os.chmod(target, 0o644)
    except tarfile.TarError as e:
        raise BundleError(f"{tar_path} is not a readable tar file ({e}); the upload is incomplete or corrupt") from e


# -- operations -----------------------------------------------------------------------------------------
def self_check(bundle: Bundle) -> dict:
    """Run the bundle's reference input through the runtime here and compare with its reference output
    (the caller has read the bundle, checking every sha256)."""
    from .engine import TvmPolicy

    policy = TvmPolicy(bundle)  # refuses a bundle for another architecture
    inputs, expected = bundle.check_pair()
    atol, rtol = bundle.tolerance
    passed, worst = compare_outputs(policy.run(policy.prepare(inputs)), expected, atol, rtol)
    return {"passed": passed, "max_abs_error": worst, "atol": atol, "rtol": rtol}


def install(root: str | Path, tar_path: str | Path, *, keep: int = 3) -> dict:
    root, tar_path = Path(root), Path(tar_path)
    if keep < 1:
        raise BundleError(f"keep must be >= 1 previous version, got {keep}")
    with _locked(root):
        staging, bundles = root / "staging", root / "bundles"
        staging.mkdir(exist_ok=True)
        bundles.mkdir(exist_ok=True)
        for stale in staging.iterdir():  # leftovers of interrupted flashes
            if stale.resolve() != tar_path.resolve():
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        work = staging / f"unpacked-{uuid.uuid4().hex}"
        try:
            safe_extract(tar_path, work)
            bundle = read_bundle(work)  # every listed file's sha256
            listed = set(bundle.manifest["files"]) | {MANIFEST}
            extra = sorted(p.relative_to(work).as_posix() for p in work.rglob("*")
                           if p.is_file() and p.relative_to(work).as_posix() not in listed)
            if extra:
                raise BundleError(f"refusing bundle: files not listed in its manifest: {extra}")
            check_runs_here(bundle)
            check = self_check(bundle)
            if not check["passed"]:
                raise BundleError(f"bundle self-check failed on this device: max |error| {check['max_abs_error']:.3g} "
                                  f"exceeds atol {check['atol']:g} / rtol {check['rtol']:g}; current version kept")
            digest = hashlib.sha256((work / MANIFEST).read_bytes()).hexdigest()[:12]
            bundle_id = f"{bundle.target.get('name', 'bundle')}-{digest}"
            final = bundles / bundle_id
            if final.exists():
                shutil.rmtree(work)  # the same bundle again: just make it current
            else:
                os.rename(work, final)
                _fsync_dir(bundles)
            previous = current_id(root)
            _switch(root, bundle_id)
            history = _history(root)
            if not history or history[-1] != bundle_id:
                history.append(bundle_id)
            _write_json_atomically(root / "history.json", {"activations": history})
            removed = _prune(root, history, keep)
            return {"installed": bundle_id, "previous": previous, "self_check": check, "removed": removed}
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
            if tar_path.is_relative_to(staging) and tar_path.exists():
                tar_path.unlink()


def _prune(root: Path, history: list[str], keep: int) -> list[str]:
    """Delete installed bundles beyond the current one and `keep` previous distinct versions."""
    wanted, seen = [], set()
    for bundle_id in reversed(history):
        if bundle_id not in seen:
            seen.add(bundle_id)
            wanted.append(bundle_id)
    keep_ids = set(wanted[:keep + 1])
    removed = []
    for path in (root / "bundles").iterdir():
        if path.name not in keep_ids:
            shutil.rmtree(path)
            removed.append(path.name)
    return sorted(removed)


def rollback(root: str | Path) -> dict:
    root = Path(root)
    with _locked(root):
        history = _history(root)
        current = current_id(root)
        while history and (history[-1] == current or not (root / "bundles" / history[-1]).is_dir()):
            history.pop()
        if not history:
            raise BundleError(f"nothing to roll back to on {root}: current is {current}, no previous version is "
                              "installed (flash keeps --keep previous versions)")
        previous = history[-1]
        read_bundle(root / "bundles" / previous)  # still intact?
        _switch(root, previous)
        _write_json_atomically(root / "history.json", {"activations": history})
        return {"current": previous, "was": current}


def check_current(root: str | Path) -> dict:
    root = Path(root)
    current = current_id(root)
    if current is None:
        raise BundleError(f"no bundle is installed on {root}")
    return {"current": current, **self_check(read_bundle(root / "current"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevla.runtime.deploy")
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("info")
    p.add_argument("root")
    p = verbs.add_parser("install")
    p.add_argument("root")
    p.add_argument("tar")
    p.add_argument("--keep", type=int, default=3)
    p = verbs.add_parser("rollback")
    p.add_argument("root")
    p = verbs.add_parser("check")
    p.add_argument("root")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        if args.verb == "info":
            result = device_info(args.root)
        elif args.verb == "install":
            result = install(args.root, args.tar, keep=args.keep)
        elif args.verb == "rollback":
            result = rollback(args.root)
        else:
            result = check_current(args.root)
    except (BundleError, OSError, ValueError) as e:
        print(json.dumps({"error": str(e)}))
        return 2
    result["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
