"""`edgevla flash`, `edgevla rollback`, `edgevla device info`: deploy bundles to a robot or a Jetson.

DEST is a local directory (a mounted SD card, the device's root seen from here) or
`ssh://user@host[:port]/path`. The bundle is checked here first (every sha256), its architecture and size
are checked against the device, then it is uploaded to the device's staging area and the device itself
(`python -m edgevla.runtime.deploy`) unpacks it, verifies it, runs its self-check and switches `current`.
ssh and scp are the system's OpenSSH: host keys are checked (known_hosts) unless `accept_new_host_key`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from edgevla.runtime.bundle import Bundle, BundleError, pack_bundle_tar, read_bundle
from edgevla.runtime.deploy import SPACE_MARGIN_BYTES, safe_extract


@dataclass(frozen=True, kw_only=True)
class FlashConfig:
    keep: int = 3  # previous versions kept on the device for rollback
    remote_python: str = "python3"  # Python on the device that has edgevla's runtime installed
    identity: str | None = None  # ssh private key file (default: ssh's own choice)
    known_hosts: str | None = None  # known_hosts file (default: ~/.ssh/known_hosts)
    accept_new_host_key: bool = False  # trust a host key seen for the first time (never a changed one)
    limit_kbps: int | None = None  # upload bandwidth limit, kbit/s (a robot on a weak Wi-Fi link)
    timeout_s: float = 600.0  # longest a single step (upload, install) may take, s

    def __post_init__(self):
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")
        if self.limit_kbps is not None and self.limit_kbps <= 0:
            raise ValueError(f"limit_kbps must be > 0, got {self.limit_kbps}")


class Destination:
    """Where bundles go; runs the device agent there and uploads files to it."""

    root: str

    def agent(self, *args: str, config: FlashConfig) -> dict:
        result = subprocess.run(self._agent_command(list(args), config), capture_output=True, text=True,
                                timeout=config.timeout_s)
        lines = result.stdout.strip().splitlines()
        try:
            reply = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            reply = None
        if reply is None:
            raise BundleError(f"the device agent on {self} gave no answer (exit {result.returncode}): "
                              f"{(result.stderr or result.stdout).strip()[-1500:]}; is edgevla installed there "
                              f"for {config.remote_python}?")
        if "error" in reply:
            raise BundleError(f"{self}: {reply['error']}")
        return reply

    def _agent_command(self, args: list[str], config: FlashConfig) -> list[str]:
        raise NotImplementedError

    def upload(self, local: Path, remote_name: str, config: FlashConfig) -> str:
        raise NotImplementedError

    def remove(self, remote_path: str, config: FlashConfig) -> None:
        raise NotImplementedError


class LocalDestination(Destination):
    def __init__(self, root: str):
        self.root = str(Path(root).absolute())

    def __str__(self):
        return self.root

    def _agent_command(self, args, config):
        return [sys.executable, "-m", "edgevla.runtime.deploy", args[0], self.root, *args[1:]]

    def upload(self, local, remote_name, config):
        staging = Path(self.root) / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        target = staging / remote_name
        shutil.copyfile(local, target)
        return str(target)

    def remove(self, remote_path, config):
        Path(remote_path).unlink(missing_ok=True)


class SshDestination(Destination):
    def __init__(self, user: str | None, host: str, port: int | None, root: str):
        self.user, self.host, self.port, self.root = user, host, port, root

    def __str__(self):
        return f"ssh://{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}{self.root}"

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _options(self, config: FlashConfig, port_flag: str) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o",
                   f"StrictHostKeyChecking={'accept-new' if config.accept_new_host_key else 'yes'}"]
        if self.port:
            options += [port_flag, str(self.port)]
        if config.identity:
            options += ["-i", config.identity, "-o", "IdentitiesOnly=yes"]
        if config.known_hosts:
            options += ["-o", f"UserKnownHostsFile={config.known_hosts}"]
        return options

    def ssh(self, command: str, config: FlashConfig) -> list[str]:
        return ["ssh", *self._options(config, "-p"), self.login, command]

    def _agent_command(self, args, config):
        remote = shlex.join([config.remote_python, "-m", "edgevla.runtime.deploy", args[0], self.root, *args[1:]])
        return self.ssh(remote, config)

    def upload(self, local, remote_name, config):
        staging = f"{self.root.rstrip('/')}/staging"
        made = subprocess.run(self.ssh(shlex.join(["mkdir", "-p", staging]), config), capture_output=True,
                              text=True, timeout=config.timeout_s)
        if made.returncode != 0:
            raise BundleError(f"cannot reach {self}: {made.stderr.strip()[-800:]}")
        target = f"{staging}/{remote_name}"
        command = ["scp", "-q", *self._options(config, "-P")]
        if config.limit_kbps:
            command += ["-l", str(config.limit_kbps)]
        result = subprocess.run(command + [str(local), f"{self.login}:{target}"], capture_output=True, text=True,
                                timeout=config.timeout_s)
        if result.returncode != 0:
            self.remove(target, config)
            raise BundleError(f"upload to {self} failed: {result.stderr.strip()[-800:]}; the current version is "
                              "untouched")
        return target

    def remove(self, remote_path, config):
        subprocess.run(self.ssh(shlex.join(["rm", "-f", remote_path]), config), capture_output=True,
                       timeout=config.timeout_s)


def parse_destination(dest: str) -> Destination:
    if dest.startswith("ssh://"):
        url = urlparse(dest)
        if not url.hostname or not url.path or url.path == "/":
            raise ValueError(f"ssh destination {dest!r}: expected ssh://[user@]host[:port]/path/to/deploy/root")
        return SshDestination(url.username, url.hostname, url.port, url.path)
    if "://" in dest:
        raise ValueError(f"destination {dest!r}: expected a local path or ssh://[user@]host[:port]/path")
    return LocalDestination(dest)


def _open_bundle(path: Path, workdir: Path) -> Bundle:
    """A bundle directory, or a bundle .tar (unpacked with every member checked); sha256s verified."""
    if path.is_file() and path.suffix == ".tar":
        unpacked = workdir / "bundle"
        safe_extract(path, unpacked)
        return read_bundle(unpacked)
    return read_bundle(path)


def bundle_size(bundle: Bundle) -> int:
    return sum((bundle.path / rel).stat().st_size for rel in bundle.manifest["files"]) + \
        (bundle.path / "manifest.json").stat().st_size


def fits(bundle: Bundle, info: dict, tar_bytes: int | None = None) -> tuple[bool, str]:
    """Whether `bundle` can be installed on the device described by `info` (arch and space), and why not."""
    arch = bundle.target.get("arch")
    if arch != info["arch"]:
        return False, (f"bundle built for {arch} ({bundle.target.get('name')}), the device is {info['arch']}: "
                       f"compile with a target for {info['arch']}")
    size = bundle_size(bundle)
    needed = size + (tar_bytes or size) + SPACE_MARGIN_BYTES
    if info["free_bytes"] < needed:
        return False, (f"the device has {info['free_bytes']:,} bytes free under {info['root']}, the bundle needs "
                       f"{needed:,} (upload + unpacked + margin): free space or use a larger volume")
    return True, f"fits: {arch}, needs {needed:,} of {info['free_bytes']:,} free bytes"


def flash(bundle_path: str | Path, dest: str, config: FlashConfig | None = None, *, log=print) -> dict:
    config = config or FlashConfig()
    destination = parse_destination(dest)
    with tempfile.TemporaryDirectory(prefix="edgevla-flash-") as tmp:
        tmp = Path(tmp)
        bundle = _open_bundle(Path(bundle_path), tmp)  # refuses a corrupt bundle before the device is touched
        tar = pack_bundle_tar(bundle, tmp / "bundle.tar")
        info = destination.agent("info", config=config)
        ok, why = fits(bundle, info, tar.stat().st_size)
        if not ok:
            raise BundleError(f"refusing to flash {bundle_path} to {destination}: {why}; current version "
                              f"({info['current']}) untouched")
        log(f"uploading {tar.stat().st_size:,} bytes to {destination} ({why})")
        remote_tar = destination.upload(tar, f"{uuid.uuid4().hex}.tar", config)
        try:
            result = destination.agent("install", remote_tar, "--keep", str(config.keep), config=config)
        finally:
            destination.remove(remote_tar, config)
    log(f"{destination}: current -> {result['installed']} (was {result['previous']}); self-check max |error| "
        f"{result['self_check']['max_abs_error']:.3g}")
    return result


def rollback(dest: str, config: FlashConfig | None = None) -> dict:
    return parse_destination(dest).agent("rollback", config=config or FlashConfig())


def device_info(dest: str, config: FlashConfig | None = None, bundle_path: str | None = None) -> dict:
    config = config or FlashConfig()
    info = parse_destination(dest).agent("info", config=config)
    if bundle_path:
        with tempfile.TemporaryDirectory() as tmp:
            ok, why = fits(_open_bundle(Path(bundle_path), Path(tmp)), info)
        info["bundle_fits"] = {"fits": ok, "why": why}
    return info


def describe_bundle(bundle_path: str | Path) -> str:
    """The manifest, readably: what `edgevla inspect BUNDLE` prints."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = _open_bundle(Path(bundle_path), Path(tmp))
        m = bundle.manifest
        lines = [f"bundle {bundle_path}",
                 f"  target        {m['target'].get('name')} ({m['target'].get('arch')}), TVM target "
                 f"{json.dumps(m['target'].get('tvm_target'))}",
                 f"  library       {m['library']} ({(bundle.library).stat().st_size:,} bytes)",
                 f"  schema        {m.get('schema_version')}, formats version {m.get('format_version')}"]
        for key in ("edgevla_version", "tvm_version", "onnx_sha256"):
            if key in m:
                lines.append(f"  {key:13s} {m[key]}")
        for spec in bundle.inputs:
            lines.append(f"  input         {spec.name} {list(spec.shape)} {spec.dtype}")
        for spec in bundle.outputs:
            lines.append(f"  output        {spec.name} {list(spec.shape)} {spec.dtype}")
        atol, rtol = bundle.tolerance
        lines.append(f"  self-check    reference pair, atol {atol:g} rtol {rtol:g}")
        lines.append(f"  files         {len(m['files'])} + manifest, {bundle_size(bundle):,} bytes, every sha256 OK")
        return "\n".join(lines)
