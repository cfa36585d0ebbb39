"""Flashing bundles: to a local path and over a real sshd on loopback; every failure leaves `current` intact."""

from __future__ import annotations

import getpass
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from edgevla.flash import FlashConfig, device_info, flash, rollback
from edgevla.runtime import deploy
from edgevla.runtime.bundle import BundleError, pack_bundle_tar, read_bundle
from edgevla.targets import compile_bundle


@pytest.fixture(scope="module")
def bundles(reach_bundle, reach_onnx, tmp_path_factory):
    """Two different host bundles (1-bit and fp32) and one for arm64."""
    out = tmp_path_factory.mktemp("flash-bundles")
    return {"v1": Path(reach_bundle), "v2": compile_bundle(reach_onnx["fp32"], "host", out / "fp32_host").path,
            "arm64": compile_bundle(reach_onnx["binary"], "arm64", out / "binary_arm64").path}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on loopback with a throw-away host key and client key."""
    if os.geteuid() != 0:
        pytest.skip("sshd with privilege separation needs root (CI and scripts/test.sh run as root)")
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
    shutil.copy(home / "client_key.pub", home / "authorized_keys")
    port = _free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPidFile {home / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    server = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(home / "sshd_config")],
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if server.poll() is not None:
            raise RuntimeError(f"sshd did not start: {server.stderr.read()}")
        time.sleep(0.05)
    host_key = (home / "host_key.pub").read_text().split()
    (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (home / "empty_known_hosts").write_text("")
    config = FlashConfig(remote_python=sys.executable, identity=str(home / "client_key"),
                         known_hosts=str(home / "known_hosts"))
    yield {"port": port, "user": getpass.getuser(), "config": config, "home": home}
    server.terminate()
    server.wait(timeout=10)


def _dest(sshd, root: Path) -> str:
    return f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}{root}"


def _current(root: Path) -> str | None:
    return deploy.current_id(root)


def _runnable(root: Path) -> bool:
    """The device agent's self-check of `current`, in its own process (as on the robot)."""
    result = subprocess.run([sys.executable, "-m", "edgevla.runtime.deploy", "check", str(root)],
                            capture_output=True, text=True, timeout=120)
    return result.returncode == 0 and json.loads(result.stdout.splitlines()[-1])["passed"]


def test_flash_over_ssh_self_checks_keeps_versions_and_rolls_back(sshd, bundles, tmp_path):
    root = tmp_path / "robot"
    dest = _dest(sshd, root)
    first = flash(bundles["v1"], dest, sshd["config"], log=lambda *_: None)
    assert first["previous"] is None and first["self_check"]["passed"]
    second = flash(bundles["v2"], dest, sshd["config"], log=lambda *_: None)
    assert second["previous"] == first["installed"] and _current(root) == second["installed"]
    assert sorted(p.name for p in (root / "bundles").iterdir()) == sorted([first["installed"], second["installed"]])
    assert not list((root / "staging").iterdir())  # nothing left behind
    info = device_info(dest, sshd["config"], bundle_path=str(bundles["arm64"]))
    assert info["arch"] == "x86_64" and info["current"] == second["installed"]
    assert not info["bundle_fits"]["fits"] and "aarch64" in info["bundle_fits"]["why"]
    back = rollback(dest, sshd["config"])
    assert back == {"current": first["installed"], "was": second["installed"], "seconds": back["seconds"]}
    assert _current(root) == first["installed"] and _runnable(root)


def test_unknown_host_key_is_refused_unless_asked(sshd, bundles, tmp_path):
    config = FlashConfig(remote_python=sys.executable, identity=sshd["config"].identity,
                         known_hosts=str(sshd["home"] / "empty_known_hosts"))
    with pytest.raises(BundleError, match="Host key verification failed"):
        flash(bundles["v1"], _dest(sshd, tmp_path / "r"), config, log=lambda *_: None)
    assert not (tmp_path / "r").exists()
    shutil.copy(sshd["home"] / "empty_known_hosts", tmp_path / "kh")
    config = FlashConfig(remote_python=sys.executable, identity=sshd["config"].identity,
                         known_hosts=str(tmp_path / "kh"), accept_new_host_key=True)
    assert flash(bundles["v1"], _dest(sshd, tmp_path / "r"), config, log=lambda *_: None)["self_check"]["passed"]


def test_flash_killed_mid_upload_leaves_the_old_version_current_and_runnable(sshd, bundles, tmp_path):
    root = tmp_path / "robot"
    dest = _dest(sshd, root)
    old = flash(bundles["v1"], dest, sshd["config"], log=lambda *_: None)["installed"]
    c = sshd["config"]
    command = [sys.executable, "-m", "edgevla.cli", "flash", str(bundles["v2"]), dest, "--limit-kbps", "200",
               "--remote-python", c.remote_python, "--identity", c.identity, "--known-hosts", c.known_hosts]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.stat().st_size > 0 for p in (root / "staging").glob("*.tar")):
        time.sleep(0.05)
    assert process.poll() is None, "the throttled upload finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGKILL)  # the flash and its scp, mid-upload
    process.wait(timeout=10)
    assert _current(root) == old and _runnable(root)
    assert list((root / "staging").glob("*.tar"))  # the partial upload is there ...
    flash(bundles["v2"], dest, sshd["config"], log=lambda *_: None)
    assert not list((root / "staging").iterdir())  # ... and the next flash cleans it up


def test_corrupted_bundle_is_refused_before_the_switch(bundles, tmp_path):
    root = tmp_path / "robot"
    old = flash(bundles["v1"], str(root), log=lambda *_: None)["installed"]
    bad = tmp_path / "bad"
    shutil.copytree(bundles["v2"], bad)
    library = bad / read_bundle(bad, check_files=False).manifest["library"]
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 .* does not match"):
        flash(bad, str(root), log=lambda *_: None)
    # The device checks again itself: a tar whose library does not match its manifest is refused there.
    tar = pack_bundle_tar(read_bundle(bad, check_files=False), tmp_path / "bad.tar")
    with pytest.raises(BundleError, match="does not match the manifest"):
        deploy.install(root, tar)
    assert _current(root) == old and _runnable(root)
    assert not list((root / "staging").iterdir())


def test_bundle_for_another_architecture_is_refused_naming_both(bundles, tmp_path):
    root = tmp_path / "robot"
    old = flash(bundles["v1"], str(root), log=lambda *_: None)["installed"]
    with pytest.raises(BundleError, match=r"bundle built for aarch64 \(arm64\), the device is x86_64"):
        flash(bundles["arm64"], str(root), log=lambda *_: None)
    tar = pack_bundle_tar(read_bundle(bundles["arm64"]), tmp_path / "arm64.tar")
    with pytest.raises(BundleError, match=r"bundle built for aarch64 \(arm64\), this device is x86_64"):
        deploy.install(root, tar)  # the device refuses it too
    assert _current(root) == old


def test_device_with_too_little_space_is_refused_with_the_old_version_intact(bundles, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI and scripts/test.sh run as root)")
    root = tmp_path / "sdcard"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(root)], check=True)
    try:
        old = flash(bundles["v1"], str(root), log=lambda *_: None)["installed"]  # 1.2 MB: fits
        with pytest.raises(BundleError, match="bytes free under .* the bundle needs"):
            flash(bundles["v2"], str(root), log=lambda *_: None)  # 5.4 MB library: does not
        assert _current(root) == old and _runnable(root)
        assert not list((root / "staging").iterdir())
    finally:
        subprocess.run(["umount", "--lazy", str(root)], check=True)


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


@pytest.mark.parametrize("members,message", [
    ([_file("manifest.json"), _file("../escape.txt")], "points outside the bundle"),
    ([_file("/tmp/absolute-escape.txt")], "points outside the bundle"),
    ([_file("manifest.json"), _link("model.so", "../../../etc/passwd")], "is a link"),
    ([_file("manifest.json"), _link("model.so", "/etc/passwd", hard=True)], "is a link"),
], ids=["dotdot", "absolute", "symlink", "hardlink"])
def test_hostile_tarballs_are_refused(bundles, tmp_path, members, message):
    root = tmp_path / "robot"
    old = flash(bundles["v1"], str(root), log=lambda *_: None)["installed"]
    evil = _tar_with(tmp_path / "evil.tar", members)
    with pytest.raises(BundleError, match=message):
        flash(evil, str(root), log=lambda *_: None)
    with pytest.raises(BundleError, match=message):
        deploy.install(root, evil)
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/absolute-escape.txt").exists()
    assert _current(root) == old


def test_pack_inspect_and_flash_from_a_tar(bundles, tmp_path, capsys):
    from edgevla.cli import main

    tar = tmp_path / "v1.tar"
    assert main(["pack", str(bundles["v1"]), "-o", str(tar)]) == 0
    assert main(["inspect", str(tar)]) == 0
    out = capsys.readouterr().out
    assert "target        host (x86_64)" in out and "every sha256 OK" in out
    assert main(["flash", str(tar), str(tmp_path / "robot"), "--keep", "1"]) == 0
    assert main(["device", "info", str(tmp_path / "robot"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert info["current"].startswith("host-")
    assert main(["rollback", str(tmp_path / "robot")]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err


def test_keep_prunes_old_versions(bundles, tmp_path):
    root = tmp_path / "robot"
    config = FlashConfig(keep=1)
    ids = [flash(bundles[v], str(root), config, log=lambda *_: None)["installed"] for v in ("v1", "v2", "v1")]
    assert _current(root) == ids[0] and sorted(p.name for p in (root / "bundles").iterdir()) == sorted(set(ids))
    assert rollback(str(root))["current"] == ids[1]
