"""The edgevla command line: verbs that exist, compile/verify/run, and error exits."""

import subprocess
import sys


from edgevla.cli import build_parser, main


def test_help_lists_only_working_verbs():
    out = subprocess.run([sys.executable, "-m", "edgevla.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    verbs = set(build_parser()._subparsers._group_actions[0].choices)
    assert verbs == {"demo", "bench", "export", "inspect", "compile", "verify", "run", "report", "flash", "rollback",
                     "device", "pack", "tune"}
    for verb in verbs:
        assert verb in out.stdout


def test_compile_verify_run(reach_onnx, tmp_path, capsys):
    bundle = tmp_path / "b"
    assert main(["compile", str(reach_onnx["binary"]), "--target", "host", "-o", str(bundle)]) == 0
    assert "PASS host (natively)" in capsys.readouterr().out
    assert main(["verify", str(bundle)]) == 0
    assert main(["run", str(bundle), "--episodes", "1", "--json", str(tmp_path / "run.json")]) == 0
    out = capsys.readouterr().out
    assert "success" in out and "infer" in out
    assert (tmp_path / "run.json").is_file()


def test_errors_exit_2_with_a_message(reach_onnx, tmp_path, capsys):
    assert main(["compile", str(reach_onnx["binary"]), "--target", "mips", "-o", str(tmp_path / "x")]) == 2
    assert "known targets" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["run", str(reach_onnx["binary"]), "--robot", "dynamixel:/dev/ttyUSB-none"]) == 2
    assert "cannot open servo bus /dev/ttyUSB-none" in capsys.readouterr().err


def test_inspect_reports_layers_and_ratio(reach_onnx, capsys):
    assert main(["inspect", str(reach_onnx["binary"])]) == 0
    out = capsys.readouterr().out
    assert "24 compressed layers" in out and "BinaryMatMul" in out and "1.250" in out
    ratio = float(out.split("compression ratio vs fp32: ")[1].split("x")[0])
    assert 4.0 < ratio < 12.0


def test_inspect_refuses_a_newer_op_version(reach_onnx, tmp_path, capsys):
    import onnx

    model = onnx.load(str(reach_onnx["binary"]))
    for opset in model.opset_import:
        if opset.domain == "ai.edgevla":
            opset.version = 99
    onnx.save(model, tmp_path / "future.onnx")
    assert main(["inspect", str(tmp_path / "future.onnx")]) == 2
    assert "version 99" in capsys.readouterr().err


def build_small_model():
    """A MODULE:FUNCTION model source for `edgevla export`."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 2))
    return {"model": model, "example_inputs": (torch.zeros(1, 8),), "calibration": [torch.randn(16, 8)]}


def test_export_verb_with_a_user_factory(tmp_path, capsys):
    out = tmp_path / "small.onnx"
    assert main(["export", "tests.test_cli:build_small_model", "-o", str(out), "--method", "nm"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "NMSparseMatMul" in text and "1 compressed layers" in text
    assert main(["export", "tests.test_cli:nothing_here", "-o", str(out)]) == 2
    assert main(["export", "no_colon", "-o", str(out)]) == 2
