"""`edgevla tune`: MetaSchedule with the 0.27 workarounds, measured locally and through TVM's RPC tracker and
servers (started here on loopback, as they would run on a fleet of boards)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from edgevla.targets import compile_bundle, verify_bundle
from edgevla.targets.tune import RpcSettings, TuneSettings, check_tracker, parse_tracker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rpc_fleet():
    """A tracker and one server registered under key 'edgevla-loopback', both on 127.0.0.1."""
    from tvm import rpc

    port = _free_port()
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                str(port), "--port-end", str(port + 1)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    server = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                rpc.connect_tracker("127.0.0.1", port).summary()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        server_port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}",
                                   "--key", "edgevla-loopback", "--host", "127.0.0.1", "--port", str(server_port),
                                   "--port-end", str(server_port + 1)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while "edgevla-loopback" not in rpc.connect_tracker("127.0.0.1", port).summary().get("queue_info", {}):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the loopback rpc_server did not register with the tracker")
            time.sleep(0.5)
        yield port
    finally:
        for process in (server, tracker):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


def test_tuning_locally_keeps_the_outputs_and_records_the_report(plain_cnn_onnx, tmp_path):
    bundle = compile_bundle(plain_cnn_onnx, "host", tmp_path / "tuned", tuning=TuneSettings(trials=16))
    report = bundle.manifest["tuning"]
    assert report["measured_on"] == "this machine" and report["tuned_tasks"] >= 1
    assert 1 <= report["measured"] <= 16 + 8  # one round may overshoot the budget by its batch
    assert (bundle.path / "tuning.json").is_file() and "tuning.json" in bundle.manifest["files"]
    assert verify_bundle(bundle.path).passed


def test_tuning_through_an_rpc_tracker_on_loopback(rpc_fleet, reach_onnx, tmp_path):
    rpc = RpcSettings(tracker_host="127.0.0.1", tracker_port=rpc_fleet, key="edgevla-loopback")
    bundle = compile_bundle(reach_onnx["binary"], "host", tmp_path / "tuned", tuning=TuneSettings(trials=16, rpc=rpc))
    report = bundle.manifest["tuning"]
    assert report["measured_on"] == f"rpc edgevla-loopback@127.0.0.1:{rpc_fleet}"
    assert report["measured"] >= 1
    # the C-kernel and dense-library calls are left as compiled, and so are the kernels that read token ids
    # (random ids would read out of bounds and kill the server measuring them); the rest were tuning tasks
    skipped = report["skipped"]
    assert any(name.startswith("edgevla_binary_matmul") for name in skipped)
    assert any(name.startswith("edgevla_dense_") for name in skipped)
    assert report["tuned_tasks"] + len(skipped) == report["tasks"]
    assert verify_bundle(bundle.path).passed


def test_tracker_problems_are_clear(rpc_fleet):
    with pytest.raises(RuntimeError, match="has no server with key 'no-such-board' \\(it has \\['edgevla-loopback'\\]\\)"):
        check_tracker(RpcSettings(tracker_host="127.0.0.1", tracker_port=rpc_fleet, key="no-such-board"))
    with pytest.raises(RuntimeError, match="cannot reach the RPC tracker at 127.0.0.1:"):
        check_tracker(RpcSettings(tracker_host="127.0.0.1", tracker_port=_free_port(), key="x"))
    assert parse_tracker("10.0.0.5:9190") == ("10.0.0.5", 9190)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_tracker("10.0.0.5")


@pytest.mark.parametrize("target,message", [
    ("arm64", "needs the board: measure through an RPC tracker"),
    ("wasm32", "target wasm32 cannot be tuned"),
    ("jetson-orin", "target jetson-orin cannot be tuned"),
])
def test_targets_that_cannot_be_tuned_here_say_why(target, message, plain_cnn_onnx, tmp_path):
    with pytest.raises(ValueError, match=message):
        compile_bundle(plain_cnn_onnx, target, tmp_path / "b", tuning=TuneSettings(trials=8))
