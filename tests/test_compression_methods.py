"""Compression methods, step by step, against independent numpy references."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from edgevla.exporters import methods
from edgevla.exporters.calibration import collect_layer_stats, damped_inverse_cholesky
from edgevla.exporters.compress import compress
from edgevla.runtime import formats


def correlated_inputs(rows, k, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)) / np.sqrt(k)
    x = rng.normal(size=(rows, k)) @ mix
    x[:, :3] *= 8.0  # a few outlier input channels, as in transformer activations
    return torch.tensor(x, dtype=torch.float32)


def stats_for(x: torch.Tensor, n_out: int, seed: int = 0):
    torch.manual_seed(seed)
    layer = nn.Linear(x.shape[1], n_out)
    model = nn.Sequential(layer)
    return layer, collect_layer_stats(model, "0", [x], device=torch.device("cpu"))


# ------------------------------------------------------------------------------------- Haar, scales
@pytest.mark.parametrize("length", [2, 16, 160])
def test_haar_round_trip_and_orthonormal(length):
    u = np.random.default_rng(length).normal(size=(3, length))
    h = formats.haar_forward(u)
    np.testing.assert_allclose(formats.haar_inverse(h), u, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), np.linalg.norm(u, axis=1))
    # independent definition: pairwise sums and differences over sqrt(2)
    for i in range(length // 2):
        np.testing.assert_allclose(h[:, i], (u[:, 2 * i] + u[:, 2 * i + 1]) / np.sqrt(2))
        np.testing.assert_allclose(h[:, length // 2 + i], (u[:, 2 * i] - u[:, 2 * i + 1]) / np.sqrt(2))
    p = methods.haar_matrix(length).numpy()
    np.testing.assert_allclose(p @ p.T, np.eye(length), atol=1e-12)
    np.testing.assert_allclose(u @ p.T, h, atol=1e-12)


def test_log_scale_codes():
    scales = np.array([[1.0, 0.5, 0.0], [1e-6, 0.3, 0.999]])
    codes, base = formats.encode_log_scales(scales)
    decoded = formats.decode_log_scales(codes, base)
    assert base == np.float32(1.0) and codes[0, 2] == 0 and decoded[0, 2] == 0
    nonzero = scales > 1e-4
    assert np.all(np.abs(decoded[nonzero] / scales[nonzero] - 1) <= 2 ** (1 / 32) - 1 + 1e-6)


def test_haar_binary_kernel_form_equals_dense_form():
    x = correlated_inputs(256, 40)
    layer, stats = stats_for(x, 12)
    packed = methods.hbvla(layer.weight.detach().double(), stats, salient_candidates=(0.05,), max_bits=2.0)
    assert packed.attrs["salient"] == 2
    xs = np.random.default_rng(1).normal(size=(5, 40)).astype(np.float32)
    np.testing.assert_allclose(formats.get_format("haar_binary").matmul_ref(xs, packed),
                               xs @ formats.unpack_haar_binary(packed).T, rtol=1e-4, atol=1e-4)
    assert {k: v.shape for k, v in packed.arrays.items()} == formats.expected_shapes(packed)


def test_binary_split_unpack_by_hand():
    signs = np.array([[True, False, True, False, True, True, False, False]])
    residual = np.array([[False]])
    outer = np.array([[False, False, True, True, False, False, False, False]])
    scales = np.array([[[2.0, 0.5, 0.1, 1.0]]])
    packed = formats.pack_binary_split(signs=signs, residual_signs=residual, outer=outer, scales=scales,
                                       salient_idx=np.array([0]), block_size=8)
    expected = [2.0 - 0.5, -0.1, 1.0, -1.0, 0.1, 0.1, -0.1, -0.1]
    np.testing.assert_allclose(formats.unpack_binary_split(packed)[0], expected, rtol=1e-3)  # float16 scales


# ----------------------------------------------------------------------------- Hessian and sweeps
def test_damped_inverse_cholesky():
    x = correlated_inputs(300, 20).double()
    h = 2 * x.T @ x / 300
    u = damped_inverse_cholesky(h, 0.01)
    damped = h + 0.01 * torch.diag(h).mean() * torch.eye(20, dtype=h.dtype)
    np.testing.assert_allclose((u.T @ u).numpy(), torch.linalg.inv(damped).numpy(), rtol=1e-6, atol=1e-8)
    assert torch.allclose(u, torch.triu(u))


def test_obs_sweep_block_form_equals_plain_gptq():
    """The 128-column lazy-update form must equal the textbook column-by-column update."""
    x = correlated_inputs(400, 37)
    layer, stats = stats_for(x, 9)
    w = layer.weight.detach().double()
    u = damped_inverse_cholesky(stats.hessian, 0.01)
    step = 0.05

    def rounding(j, col):
        return torch.round(col / step) * step

    q_block = methods.obs_sweep(w.clone(), u, rounding, block=8)
    # numpy reference, one column at a time
    wn, un = w.numpy().copy(), u.numpy()
    qn = np.zeros_like(wn)
    for j in range(wn.shape[1]):
        qn[:, j] = np.round(wn[:, j] / step) * step
        err = (wn[:, j] - qn[:, j]) / un[j, j]
        wn[:, j + 1:] -= np.outer(err, un[j, j + 1:])
    np.testing.assert_allclose(q_block.numpy(), qn, atol=1e-9)


def test_salient_columns_match_numpy_score():
    x = correlated_inputs(300, 30)
    layer, stats = stats_for(x, 8)
    w = layer.weight.detach().double()
    u = damped_inverse_cholesky(stats.hessian, 0.01)
    chosen = methods.salient_columns(w, u, 4).numpy()
    hinv = np.linalg.inv(stats.hessian.numpy() + 0.01 * np.mean(np.diag(stats.hessian.numpy())) * np.eye(30))
    score = (w.numpy() ** 2).sum(0) / np.diag(hinv) ** 2
    np.testing.assert_array_equal(chosen, np.sort(np.argsort(-score)[:4]))


def test_split_search_is_the_best_break_on_its_grid():
    values = torch.tensor(np.random.default_rng(3).laplace(size=(6, 50)))
    outer, p = methods._split_search(values, candidates=15)
    mag = values.abs().numpy()

    def error(break_point):
        total = 0.0
        for part in (mag > break_point, mag <= break_point):
            alpha = (mag * part).sum(1) / np.maximum(part.sum(1), 1)
            total += (((mag - alpha[:, None]) ** 2) * part).sum()
        return total

    grid = np.linspace(0.05 * mag.max(), 0.95 * mag.max(), 15)
    assert error(p) <= min(error(g) for g in grid) + 1e-9
    np.testing.assert_array_equal(outer.numpy(), mag > p)


def test_output_error_is_exact():
    x = correlated_inputs(200, 16)
    layer, stats = stats_for(x, 5)
    w = layer.weight.detach().double()
    approx = w + 0.01 * torch.randn_like(w)
    direct = torch.linalg.norm(x.double() @ (approx - w).T) / torch.linalg.norm(x.double() @ w.T + layer.bias.double())
    assert stats.output_error(w, approx, layer.bias.detach()) == pytest.approx(float(direct), rel=1e-9)


def test_policy_aware_weights_follow_the_action():
    """Only token 0 reaches the action: the other tokens' rows get the floor weight."""

    class ReadsFirstToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, tokens):
            return self.head(self.proj(tokens)[:, 0])

    torch.manual_seed(0)
    model = ReadsFirstToken()
    tokens = torch.randn(4, 5, 8)
    stats = collect_layer_stats(model, "proj", [tokens], policy_aware=True, device=torch.device("cpu"))
    first = tokens[:, 0].double()
    others = tokens[:, 1:].reshape(-1, 8).double()
    # weights: token-0 rows share the mass (mean 1 over all rows => each ~5), others are floored to 1e-3
    moment_first = stats.second_moment - 1e-3 * others.T @ others
    assert torch.allclose(moment_first / torch.trace(moment_first),
                          (first.T @ first) / torch.trace(first.T @ first), atol=0.1)
    assert stats.rows == pytest.approx(4 * 5, rel=0.01)


# ------------------------------------------------------------------------------------ methods
def weighted_error(stats, w, packed):
    dense = torch.from_numpy(formats.get_format(packed.format).unpack(packed)).double()
    return stats.output_error(w, dense, None)


def test_hbvla_fits_the_bit_budget_and_beats_sign():
    x = correlated_inputs(2000, 160, seed=4)
    layer, stats = stats_for(x, 160)
    w = layer.weight.detach().double()
    h = methods.hbvla(w, stats)
    assert h.bits_per_weight <= 1.1
    s = methods.sign(w, stats, group_size=160)  # sign at its cheapest: 1.1 bits/weight
    assert weighted_error(stats, w, h) < 0.8 * weighted_error(stats, w, s)
    # BiLLM pays a split bit per weight on top of the sign: counted honestly it is a ~2.5-bit method here.
    assert methods.billm(w, stats).bits_per_weight > 2.0


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_criteria(n, m):
    x = correlated_inputs(500, 48, seed=n + m)
    layer, stats = stats_for(x, 10)
    w = layer.weight.detach().double()
    errors = {}
    for criterion in ("magnitude", "wanda", "sparsegpt"):
        packed = methods.nm(w, stats, n=n, m=m, criterion=criterion)
        dense = formats.unpack_nm(packed)
        assert (np.count_nonzero(dense.reshape(10, -1, m), axis=2) <= n).all()
        errors[criterion] = weighted_error(stats, w, packed)
    # wanda's mask is the top-n of |w| * ||x_j|| (independent numpy computation)
    score = np.abs(w.numpy()) * np.sqrt(np.diag(stats.second_moment.numpy()))
    ref = np.zeros_like(score, dtype=bool)
    for r, g in itertools.product(range(10), range(48 // m)):
        ref[r, g * m + np.argsort(-score[r, g * m:(g + 1) * m], kind="stable")[:n]] = True
    np.testing.assert_array_equal(formats.unpack_nm(methods.nm(w, stats, n=n, m=m, criterion="wanda")) != 0, ref)
    assert errors["sparsegpt"] < errors["magnitude"]


class PlainBlock(nn.Module):
    """A pre-norm transformer block written with nn.Linear layers (the way most policy code is)."""

    def __init__(self, width=64, heads=4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5, -1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, c))
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm2(x))))


def test_methods_on_an_arbitrary_transformer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), PlainBlock(), PlainBlock(), nn.Linear(64, 3)).eval()
    batches = [torch.randn(2, 6, 16) for _ in range(3)]
    with torch.no_grad():
        y_ref = model(batches[0])
    for method, options in [("sign", {}), ("billm", {}), ("hbvla", {"max_bits": 1.3}),
                            ("nm", {"criterion": "sparsegpt"})]:
        result = compress(model, method, calibration=batches, **options)
        names = {l.name for l in result.report.compressed}
        assert names == {f"{i}.{n}" for i in (1, 2) for n in ("qkv", "proj", "up", "down")}, names
        with torch.no_grad():
            y = result.model(batches[0])
        assert y.shape == y_ref.shape and torch.isfinite(y).all()
        assert all(l.relative_error is not None and l.relative_error < 1.0 for l in result.report.compressed)


def test_fused_torch_transformer_layers_are_kept_with_a_reason():
    model = nn.Sequential(nn.Linear(16, 32), nn.TransformerEncoderLayer(32, 4, 64, batch_first=True),
                          nn.Linear(32, 3)).eval()
    result = compress(model, "sign", calibration=[torch.randn(2, 6, 16)])
    kept = {l.name: l.note for l in result.report.layers if l.method == "kept"}
    assert "TransformerEncoderLayer" in kept["1.linear1"] and "TransformerEncoderLayer" in kept["1.linear2"]
    assert "MultiheadAttention" in kept["1.self_attn.out_proj"]
    result.model(torch.randn(2, 6, 16))


def test_method_errors():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 4))
    with pytest.raises(ValueError, match="needs calibration"):
        compress(model, "hbvla", include=["1"])
    with pytest.raises(ValueError, match="unknown N:M criterion"):
        compress(model, "nm", include=["1"], criterion="random", calibration=[torch.zeros(2, 64)])
    with pytest.raises(ValueError, match="layer '1'.*group_size"):
        compress(model, "sign", include=["1"], group_size=12)


# ------------------------------------------------------------------------------ more families
def test_dense_sparse_fits_calibration_and_structure():
    x = correlated_inputs(800, 48, seed=9)
    layer, stats = stats_for(x, 32)
    w = layer.weight.detach().double()
    packed = methods.dense_sparse(w, stats, atoms=16, nonzeros=3)
    assert packed.arrays["dictionary"].shape == (32, 16) and packed.arrays["atom_idx"].shape == (48, 3)
    err = weighted_error(stats, w, packed)
    one_iteration = weighted_error(stats, w, methods.dense_sparse(w, stats, atoms=16, nonzeros=3, iterations=1))
    assert err <= one_iteration + 1e-9 and err < 0.6
    # every input column uses exactly 3 atoms (independent decoding)
    sparse = np.zeros((16, 48))
    for j in range(48):
        for t in range(3):
            sparse[packed.arrays["atom_idx"][j, t], j] += float(packed.arrays["values"][j, t])
    np.testing.assert_allclose(formats.unpack_dense_sparse(packed),
                               packed.arrays["dictionary"].astype(np.float64) @ sparse, rtol=1e-4, atol=1e-5)


def test_group_sparse_keeps_the_most_energetic_groups():
    w = torch.zeros(2, 12, dtype=torch.float64)
    w[0, 4:8] = 1.0
    w[0, 0] = 0.5
    w[1, 8:12] = -2.0
    w[1, 1] = 0.1
    packed = methods.group_sparse(w, None, group=4, sparsity=0.5)  # 3 groups of 4 -> keep 2 (rounded)
    np.testing.assert_array_equal(packed.arrays["group_idx"], [[0, 1], [0, 2]])
    np.testing.assert_allclose(formats.unpack_group_sparse(packed), w.numpy(), atol=1e-3)


def brute_force_knapsack(costs, errors, budget):
    best = None
    for choice in itertools.product(*(range(len(c)) for c in costs)):
        cost = sum(costs[i][o] for i, o in enumerate(choice))
        error = sum(errors[i][o] for i, o in enumerate(choice))
        if cost <= budget and (best is None or error < best[0]):
            best = (error, list(choice))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    layers = rng.integers(2, 5)
    costs = [list(rng.integers(1, 10, size=rng.integers(2, 4)).astype(float)) for _ in range(layers)]
    errors = [list(rng.random(len(c))) for c in costs]
    budget = float(sum(min(c) for c in costs) + rng.integers(0, 8))
    expected_error, _ = brute_force_knapsack(costs, errors, budget)
    chosen = methods.solve_multiple_choice_knapsack(costs, errors, budget, resolution=int(budget))
    assert sum(costs[i][o] for i, o in enumerate(chosen)) <= budget
    assert sum(errors[i][o] for i, o in enumerate(chosen)) == pytest.approx(expected_error)
    with pytest.raises(ValueError, match="below the cheapest"):
        methods.solve_multiple_choice_knapsack(costs, errors, sum(min(c) for c in costs) - 0.5)


def test_budget_method_respects_the_byte_budget():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 64), PlainBlock(), nn.Linear(64, 3)).eval()
    batches = [torch.randn(4, 6, 16) for _ in range(2)]
    candidates = [("sign", {"group_size": 64}), ("nm", {"n": 2, "m": 4, "criterion": "sparsegpt"})]
    for bits in (1.3, 4.0, 9.5):
        result = compress(model, "budget", calibration=batches, candidates=candidates, bits_per_weight=bits)
        assert result.report.mean_bits_per_weight() <= bits + 1e-9
    picks = {l.method for l in result.report.compressed}
    assert picks == {"nm"}  # with room for 2:4 everywhere, the lower-error family wins
    with pytest.raises(ValueError, match="exactly one of"):
        compress(model, "budget", calibration=batches, candidates=candidates)


def test_conv2d_layers_are_compressed_as_im2col_matrices():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 10)).eval()
    batches = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    with torch.no_grad():
        y_ref = model(batches[0])
    for method, options in [("sign", {"group_size": 72}), ("hbvla", {"max_bits": 1.5}), ("nm", {"criterion": "sparsegpt"})]:
        result = compress(model, method, calibration=batches, include=["2", "4"], **options)
        layers = {l.name: l for l in result.report.compressed}
        assert layers["2"].shape == (16, 72) and layers["4"].shape == (16, 144)
        assert all(l.relative_error < 1.0 for l in layers.values())
        with torch.no_grad():
            y = result.model(batches[0])
        assert y.shape == y_ref.shape and torch.isfinite(y).all()
    # the packed conv computes exactly what a conv with the decoded weight computes
    conv = result.model[2]
    dense = torch.from_numpy(formats.unpack_nm(conv.packed())).reshape(16, 8, 3, 3)
    x = torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, dense, conv.bias, 2, 1))


def test_policy_aware_stats_for_conv_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    stats = collect_layer_stats(model, "0", [torch.randn(3, 2, 5, 5)], policy_aware=True, device=torch.device("cpu"))
    assert stats.second_moment.shape == (18, 18) and stats.rows == pytest.approx(3 * 25, rel=1e-6)


def test_export_refuses_formats_without_an_onnx_op(tmp_path, monkeypatch):
    from edgevla.exporters import onnx_export

    model = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 64), nn.Linear(64, 2))
    result = compress(model, "nm", include=["1"])
    monkeypatch.setattr(onnx_export, "EXPORTABLE_FORMATS", {"binary"})  # as for a format added without its op
    with pytest.raises(ValueError, match=r"no ONNX exporter yet .*1 \(DecodedLinear, format 'nm'\)"):
        onnx_export.export(result.model, (torch.zeros(1, 8),), tmp_path / "m.onnx")


@pytest.mark.parametrize("method,options", [("sign", {}), ("billm", {}), ("hbvla", {}), ("nm", {"criterion": "wanda"}),
                                            ("dense_sparse", {"iterations": 2}), ("group_sparse", {}),
                                            ("budget", {"bits_per_weight": 3.0})])
def test_every_method_on_the_reach_policy(untrained_reach, reach_example, method, options):
    model, _ = untrained_reach
    calibration = [tuple(t.repeat(4, *([1] * (t.dim() - 1))) for t in reach_example)]
    result = compress(model, method, calibration=calibration, include=["blocks.*"], **options)
    assert len(result.report.compressed) == 24
    if method == "hbvla":
        assert result.report.mean_bits_per_weight() <= 1.1
    with torch.no_grad():
        assert result.model(*reach_example).shape == (1, 4, 2)


def test_dense_sparse_straight_through_finetuning_lowers_the_loss():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4)).eval()
    inputs = torch.randn(256, 16)
    with torch.no_grad():
        targets = teacher(inputs)

    def loss(model):
        return torch.nn.functional.mse_loss(model(inputs), targets)

    plain = compress(teacher, "dense_sparse", calibration=[inputs], include=["2"], atoms=8, nonzeros=2)
    tuned = compress(teacher, "dense_sparse", calibration=[inputs], include=["2"], atoms=8, nonzeros=2,
                     finetune_loss=loss, finetune_steps=60, finetune_lr=3e-3)
    with torch.no_grad():
        assert loss(tuned.model) < 0.8 * loss(plain.model)
    assert tuned.report.finetune_loss[-1] < tuned.report.finetune_loss[0]
    layer = tuned.model[2]
    assert layer.format_name == "dense_sparse" and layer.packed().arrays["atom_idx"].shape == (64, 2)
    assert all(p.requires_grad for p in tuned.model[0].parameters())  # unfrozen again afterwards


def test_an_unavailable_device_is_a_clear_error():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 4))
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the error for a missing one cannot be provoked here")
    with pytest.raises(ValueError, match="torch sees no CUDA GPU.*device='cpu'"):
        compress(model, "sign", include=["1"], device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA GPU visible to torch (the pinned torch wheel is the CPU build); this test runs "
                           "on a machine with a GPU and a CUDA torch")
@pytest.mark.parametrize("method,options", [("billm", {}), ("hbvla", {}), ("nm", {"criterion": "sparsegpt"}),
                                            ("dense_sparse", {"iterations": 2}), ("group_sparse", {})])
def test_calibration_on_cuda_matches_the_cpu(method, options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), PlainBlock(), PlainBlock(), nn.Linear(64, 3)).eval()
    batches = [torch.randn(4, 6, 16) for _ in range(4)]
    on_cpu = compress(model, method, calibration=batches, device="cpu", **options)
    on_gpu = compress(model, method, calibration=batches, device="cuda", **options)
    for cpu_layer, gpu_layer in zip(on_cpu.report.compressed, on_gpu.report.compressed):
        assert cpu_layer.name == gpu_layer.name and cpu_layer.bits_per_weight == gpu_layer.bits_per_weight
        # float64 on both sides; only reduction order differs, so a few near-zero signs may flip
        assert gpu_layer.relative_error == pytest.approx(cpu_layer.relative_error, rel=0.05, abs=1e-6)
    with torch.no_grad():
        x = batches[0]
        torch.testing.assert_close(on_gpu.model(x), on_cpu.model(x), rtol=0.05, atol=0.05)


def test_dense_sparse_atoms_are_balanced_for_float16_storage():
    rng = np.random.default_rng(3)
    dictionary = torch.tensor(rng.normal(size=(16, 6)) * 1e4)  # the closed-form update can drift like this
    idx = torch.tensor(rng.integers(0, 5, size=(12, 2)))  # atom 5 unused
    idx[:, 1] = (idx[:, 0] + 1) % 5
    values = torch.tensor(rng.normal(size=(12, 2)) * 1e-4)
    sparse = torch.zeros(6, 12, dtype=torch.float64).scatter_(0, idx.T, values.T)
    d2, v2 = methods.balance_atoms(dictionary, idx, values)
    s2 = torch.zeros(6, 12, dtype=torch.float64).scatter_(0, idx.T, v2.T)
    torch.testing.assert_close(d2 @ s2, dictionary @ sparse)
    for a in range(5):
        assert float(d2[:, a].abs().max()) == pytest.approx(float(v2[idx == a].abs().max()))
    torch.testing.assert_close(d2[:, 5], dictionary[:, 5])  # unused atoms are left as they are
    # the method is scale-equivariant: weights 1e5 times larger (beyond float16 themselves) give the same
    # factorization scaled, with both float16 factors finite
    w = torch.tensor(rng.normal(size=(24, 32)))
    small = formats.unpack_dense_sparse(methods.dense_sparse(w, None, atoms=32, nonzeros=4, iterations=2))
    large = formats.unpack_dense_sparse(methods.dense_sparse(w * 1e5, None, atoms=32, nonzeros=4, iterations=2))
    assert np.isfinite(large).all()
    np.testing.assert_allclose(large / 1e5, small, atol=5e-3 * np.abs(small).max())


def test_a_float16_overflow_is_refused_with_the_layer_named():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 4))
    with torch.no_grad():
        model[1].weight.mul_(1e6)  # mean |w| per group beyond 65504: the sign scales would be inf
    with pytest.raises(ValueError, match=r"layer '1' .*float16 fields of format 'binary'.*exclude=\['1'\]"):
        compress(model, "sign", include=["1"])


def numpy_omp(dictionary, column, nonzeros):
    """Textbook OMP on one column: pick the atom most correlated with the residual (normalised), refit."""
    chosen, residual = [], column.copy()
    norms = np.linalg.norm(dictionary, axis=0)
    for _ in range(nonzeros):
        corr = np.abs(dictionary.T @ residual) / norms
        corr[chosen] = -1.0
        chosen.append(int(np.argmax(corr)))
        values, *_ = np.linalg.lstsq(dictionary[:, chosen], column, rcond=None)
        residual = column - dictionary[:, chosen] @ values
    return chosen, values


def test_omp_through_the_gram_matrix_equals_textbook_omp():
    rng = np.random.default_rng(5)
    dictionary, w = rng.normal(size=(20, 12)), rng.normal(size=(20, 30))
    idx, values = methods._omp_columns(torch.tensor(dictionary), torch.tensor(w), 5)
    for j in range(30):
        chosen, ref_values = numpy_omp(dictionary, w[:, j], 5)
        assert idx[j].tolist() == chosen
        np.testing.assert_allclose(values[j].numpy(), ref_values, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n,k,bits", [(384, 384, 2.0), (1536, 384, 2.0), (384, 1536, 1.0), (64, 48, 3.0)])
def test_dense_sparse_shape_follows_the_bit_budget(n, k, bits):
    atoms, nonzeros = methods.dense_sparse_shape_for_bits(n, k, bits)
    assert nonzeros == atoms // 2

    def stored_bits(a):  # float16 atoms and codes, one index byte per code (<= 256 atoms)
        return (n * a * 16 + k * (a // 2) * (16 + 8)) / (n * k)

    assert stored_bits(atoms) <= bits < stored_bits(atoms + 1)
    w = torch.tensor(np.random.default_rng(0).normal(size=(n, k)))
    if n * k <= 64 * 48:
        assert methods.dense_sparse(w, None, bits_per_weight=bits, iterations=1).bits_per_weight <= bits
    assert methods.dense_sparse_shape_for_bits(n, k, 0.01) == (2, 1)  # the smallest factorization
