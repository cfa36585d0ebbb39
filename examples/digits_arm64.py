"""A compressed vision model on an ARM board: a small CNN for scikit-learn's digits, 1-bit, compiled for arm64.

Trains a CNN on the 8x8 digits bundled with scikit-learn (no download), binarizes its dense layers with a
1-bit method (the convolutions stay float, as the papers keep the stem), exports ONNX with the ai.edgevla
ops, compiles for `arm64` with TVM and runs the whole held-out set through the bundle with the edgevla
runtime in an aarch64 Python under qemu. Prints the accuracy each step keeps and the bundle's size.

    python examples/digits_arm64.py [--method hbvla|billm|sign] [--target arm64-rpi5] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np


def digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    test = order[:360]
    train = order[360:]
    return (images[train], labels[train]), (images[test], labels[test])


def build_cnn():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def train(model, images, labels, *, epochs: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    for _ in range(epochs):
        for batch in torch.randperm(len(y)).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())


def main(argv=None) -> int:
    import torch

    from edgevla.exporters.compress import compress
    from edgevla.exporters.onnx_export import export
    from edgevla.targets import compile_bundle, get_target, verify_bundle
    from edgevla.runtime.bundle import read_bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="hbvla", help="1-bit method for the dense layers (hbvla, billm, sign)")
    parser.add_argument("--target", default="arm64", help="arm64, arm64-rpi5 or arm64-orin-cpu")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (what the test uses)")
    parser.add_argument("--out", default="artifacts/digits", help="where the ONNX file and the bundle go")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    (train_x, train_y), (test_x, test_y) = digits_split()
    model = train(build_cnn(), train_x, train_y, epochs=4 if args.quick else 15)
    with torch.no_grad():
        fp32_accuracy = accuracy(model(torch.from_numpy(test_x)).numpy(), test_y)
    calibration = [torch.from_numpy(train_x[i:i + 128]) for i in range(0, 512, 128)]
    result = compress(model, args.method, calibration=calibration, include=["6", "8"])  # the two hidden Linears
    with torch.no_grad():
        compressed_accuracy = accuracy(result.model(torch.from_numpy(test_x)).numpy(), test_y)

    onnx_path = out / f"digits_{args.method}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(result.model, (torch.from_numpy(test_x),), onnx_path, input_names=["image"], output_names=["logits"])
    bundle = compile_bundle(onnx_path, args.target, out / f"digits_{args.method}_{args.target}")
    report = verify_bundle(bundle.path)
    print(report.line())
    outputs, how = get_target(args.target).run_check(read_bundle(bundle.path), {"image": test_x})
    device_accuracy = accuracy(outputs[0], test_y)
    library_bytes = bundle.library.stat().st_size

    print(f"\n{result.report.table()}\n")
    print(f"{'variant':34s} {'accuracy':>9s}  (held-out digits: {len(test_y)})")
    print(f"{'fp32, PyTorch':34s} {fp32_accuracy * 100:8.1f}%")
    print(f"{args.method + ' 1-bit dense layers, PyTorch':34s} {compressed_accuracy * 100:8.1f}%")
    print(f"{args.method + ' bundle, ' + how.split(',')[0]:34s} {device_accuracy * 100:8.1f}%   "
          f"({library_bytes:,} byte library, {result.report.mean_bits_per_weight():.2f} bits/weight in the "
          f"compressed layers)")
    same = abs(device_accuracy - compressed_accuracy) <= 1 / len(test_y)
    return 0 if report.passed and same else 1


if __name__ == "__main__":
    sys.exit(main())
