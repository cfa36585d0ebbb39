"""Compression methods: dense weight (+ calibration statistics) -> PackedWeight.

Every method takes W [N, K] as a float64 torch tensor on the compute device and the layer's LayerStats
(None when no calibration was given), and returns a PackedWeight in one of the formats of
`edgevla.runtime.formats`. The error feedback shared by billm, hbvla and sparsegpt is the GPTQ/OBS column
sweep: quantize (or prune) column j, divide its error by the Cholesky diagonal of H^-1 and subtract it,
scaled by that row of the factor, from the columns not yet processed; columns are handled in blocks of 128
with the update to later blocks applied once per block.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from edgevla.runtime import formats
from .calibration import LayerStats, damped_inverse_cholesky


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _hinv_factor(stats: LayerStats | None, k: int, like: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 (identity without calibration: plain rounding, no feedback)."""
    if stats is None:
        return torch.eye(k, dtype=like.dtype, device=like.device)
    return damped_inverse_cholesky(stats.hessian.to(like), damping).to(like)


def obs_sweep(w: torch.Tensor, factor: torch.Tensor, quantize_column: Callable[[int, torch.Tensor], torch.Tensor],
              *, block: int = 128, start_block: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """GPTQ-style sweep over the columns of w (modified in place); returns the quantized matrix.

    quantize_column(j, current_column) -> quantized column; start_block(j0, w[:, j0:j1]) is called when a
    block starts so block-level choices (scales, splits, masks) see the error-updated weights.
    """
    n, k = w.shape
    q = torch.zeros_like(w)
    for j0 in range(0, k, block):
        j1 = min(j0 + block, k)
        if start_block is not None:
            start_block(j0, w[:, j0:j1])
        block_err = torch.zeros(n, j1 - j0, dtype=w.dtype, device=w.device)
        for j in range(j0, j1):
            q[:, j] = quantize_column(j, w[:, j])
            err = (w[:, j] - q[:, j]) / factor[j, j]
            w[:, j + 1:j1] -= err[:, None] * factor[j, j + 1:j1][None, :]
            block_err[:, j - j0] = err
        w[:, j1:] -= block_err @ factor[j0:j1, j1:]
    return q


# ------------------------------------------------------------------------------------------- sign
def sign(weight: torch.Tensor, stats: LayerStats | None, *, group_size: int = formats.BINARY_DEFAULT_GROUP):
    """XNOR-Net style: sign of each weight times the mean |w| of its group (no calibration used)."""
    return formats.pack_binary(_np(weight).astype(np.float32), group_size=group_size)


# ------------------------------------------------------------------------------------------ billm
def salient_columns(w: torch.Tensor, factor: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` columns with the largest sum_i w_ij^2 / [H^-1]_jj^2 (BiLLM's salience), ascending."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.long, device=w.device)
    hinv_diag = (factor * factor).sum(0)  # diag(U^T U) = diag(H^-1)
    score = (w * w).sum(0) / hinv_diag.pow(2)
    return torch.sort(torch.topk(score, count).indices).values


def _split_search(values: torch.Tensor, candidates: int = 40) -> tuple[torch.Tensor, float]:
    """BiLLM's bell-shaped split of one block's non-salient weights: a break p on |w|, per-row scales for
    |w| <= p and |w| > p, chosen to minimise the binarization error. Returns (outer mask, p)."""
    mag = values.abs()
    flat = mag[mag > 0]
    if flat.numel() == 0:
        return torch.zeros_like(values, dtype=torch.bool), 0.0
    best, best_p = None, 0.0
    top = float(flat.max())
    for p in torch.linspace(0.05 * top, 0.95 * top, candidates).tolist():
        outer = mag > p
        err = 0.0
        for part in (outer, ~outer):
            count = part.sum(1).clamp_min(1)
            alpha = (mag * part).sum(1) / count
            err += float(((mag - alpha[:, None]).pow(2) * part).sum())
        if best is None or err < best:
            best, best_p = err, p
    return mag > best_p, best_p


def billm(weight: torch.Tensor, stats: LayerStats | None, *, block_size: int = 128, salient_fraction: float = 0.02,
          damping: float = 0.01):
    """BiLLM-style 1-bit: Hessian salience, residual binarization of salient columns, bell-shaped split of
    the rest into two magnitude groups with their own per-row scales, GPTQ error feedback per 128 columns.
    Honest cost: besides the sign bit every weight carries a split bit, so ~2 bits/weight plus scales."""
    w = weight.clone()
    n, k = w.shape
    factor = _hinv_factor(stats, k, w, damping)
    salient = salient_columns(w, factor, int(round(salient_fraction * k)))
    is_salient = torch.zeros(k, dtype=torch.bool, device=w.device)
    is_salient[salient] = True
    blocks = -(-k // block_size)
    scales = torch.zeros(n, blocks, 4, dtype=w.dtype, device=w.device)
    outer_mask = torch.zeros(n, k, dtype=torch.bool, device=w.device)
    signs = torch.zeros(n, k, dtype=torch.bool, device=w.device)
    residual = torch.zeros(n, k, dtype=torch.bool, device=w.device)

    def start_block(j0, current):
        b = j0 // block_size
        cols = torch.arange(j0, j0 + current.shape[1], device=w.device)
        sal = is_salient[cols]
        if sal.any():
            ws = current[:, sal]
            a1 = ws.abs().mean(1)
            r = ws - a1[:, None] * torch.where(ws >= 0, 1.0, -1.0).to(ws)
            scales[:, b, 0], scales[:, b, 1] = a1, r.abs().mean(1)
        rest = current[:, ~sal]
        if rest.numel():
            outer, _ = _split_search(rest)
            mag = rest.abs()
            for slot, part in ((3, outer), (2, ~outer)):
                scales[:, b, slot] = (mag * part).sum(1) / part.sum(1).clamp_min(1)
            outer_mask[:, cols[~sal]] = outer

    def quantize_column(j, column):
        b = j // block_size
        s1 = column >= 0
        signs[:, j] = s1
        sgn = torch.where(s1, 1.0, -1.0).to(column)
        if is_salient[j]:
            first = scales[:, b, 0] * sgn
            s2 = (column - first) >= 0
            residual[:, j] = s2
            return first + scales[:, b, 1] * torch.where(s2, 1.0, -1.0).to(column)
        return torch.where(outer_mask[:, j], scales[:, b, 3], scales[:, b, 2]) * sgn

    obs_sweep(w, factor, quantize_column, block=block_size, start_block=start_block)
    idx = _np(salient)
    return formats.pack_binary_split(signs=_np(signs), residual_signs=_np(residual[:, salient]), outer=_np(outer_mask),
                                     scales=_np(scales), salient_idx=idx, block_size=block_size)


# ------------------------------------------------------------------------------------------ hbvla
def haar_matrix(length: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The orthonormal one-level Haar matrix P with haar(u) = P u (formats.haar_forward)."""
    eye = np.eye(length)
    return torch.tensor(formats.haar_forward(eye).T.copy(), dtype=dtype, device=device)


def _hbvla_bits(n: int, k: int, salient: int, kh: int, group: int) -> float:
    nbytes = formats.packed_nbytes("haar_binary", n, {"in_features": k, "salient": salient, "group_size": group})
    return 8.0 * nbytes / (n * k)


def _haar_round_error(w0, stats, order, s, q_sal, candidate, haar, kn, group_size) -> float:
    """Calibration output error of one (signs, scales) choice for the Haar part (salient part fixed)."""
    signs_h, scale_values = candidate
    n, k = w0.shape
    wh = torch.where(signs_h, 1.0, -1.0).to(w0) * scale_values.repeat_interleave(group_size, dim=1)
    approx = torch.zeros_like(w0)
    approx[:, order[:s]] = q_sal
    approx[:, order[s:]] = (wh @ haar)[:, :kn]
    delta = approx - w0
    if stats is None:
        return float((delta ** 2).sum())
    return float(torch.einsum("ik,kl,il->", delta, stats.second_moment.to(w0), delta))


def _hbvla_once(w0: torch.Tensor, stats: LayerStats | None, salient_count: int, group_size: int | None,
                damping: float, max_bits: float, rounds: int = 3) -> tuple[formats.PackedWeight, float]:
    w = w0.clone()
    n, k = w.shape
    factor = _hinv_factor(stats, k, w, damping)
    salient = salient_columns(w, factor, salient_count)
    is_salient = torch.zeros(k, dtype=torch.bool, device=w.device)
    is_salient[salient] = True
    others = torch.nonzero(~is_salient).reshape(-1)
    kn = others.numel()
    kh = formats.haar_padded_length(kn)
    if group_size is None:  # one scale per Haar band when the bit budget allows, else one per row
        group_size = kh // 2 if _hbvla_bits(n, k, salient_count, kh, kh // 2) <= max_bits else kh
    if kh % group_size or group_size % 8:
        raise ValueError(f"group_size {group_size} must be a multiple of 8 dividing the Haar width {kh}")

    # 1. Salient columns first (largest salience), two-pass residual binarization with per-column scales;
    #    their error is fed back into the other columns through the policy-aware H (act-order GPTQ).
    order = torch.cat([salient, others])
    h = stats.hessian.to(w) if stats is not None else torch.eye(k, dtype=w.dtype, device=w.device)
    h_perm = h[order][:, order]
    f_perm = damped_inverse_cholesky(h_perm, damping).to(w)
    wp = w[:, order].clone()
    s = salient.numel()
    s1 = wp[:, :s] >= 0
    a1 = wp[:, :s].abs().mean(0)
    first = a1[None, :] * torch.where(s1, 1.0, -1.0).to(w)
    s2 = (wp[:, :s] - first) >= 0
    a2 = (wp[:, :s] - first).abs().mean(0)
    q_sal = first + a2[None, :] * torch.where(s2, 1.0, -1.0).to(w)
    for j in range(s):
        err = (wp[:, j] - q_sal[:, j]) / f_perm[j, j]
        wp[:, j + 1:] -= err[:, None] * f_perm[j, j + 1:][None, :]

    # 2. The rest moves to the Haar domain (weights and Hessian alike), then group-wise 1-bit with
    #    GPTQ feedback; group scales are 8-bit log codes computed from the error-updated weights.
    w_rest = torch.zeros(n, kh, dtype=w.dtype, device=w.device)
    w_rest[:, :kn] = wp[:, s:]
    haar = haar_matrix(kh, device=w.device)
    wh = w_rest @ haar.T
    h_rest = torch.zeros(kh, kh, dtype=w.dtype, device=w.device)
    if stats is not None:
        # H of the remaining columns, conditioned on the salient ones being fixed (Schur complement is what
        # the sweep above already accounted for; the plain block is what later errors are weighed with).
        h_rest[:kn, :kn] = h_perm[s:, s:]
    else:
        h_rest[:kn, :kn] = torch.eye(kn, dtype=w.dtype, device=w.device)
    h_haar = haar @ h_rest @ haar.T
    f_haar = damped_inverse_cholesky(h_haar, damping).to(w)
    group_scale = torch.zeros(n, dtype=w.dtype, device=w.device)
    scale_values = torch.zeros(n, kh // group_size, dtype=w.dtype, device=w.device)
    signs_h = torch.zeros(n, kh, dtype=torch.bool, device=w.device)
    fixed_scales: list[torch.Tensor | None] = [None]

    def start_block(j0, current):
        # First round: mean |w| of the error-updated group; later rounds: the refitted scale, held fixed.
        g = j0 // group_size
        group_scale.copy_(current.abs().mean(1) if fixed_scales[0] is None else fixed_scales[0][:, g])
        scale_values[:, g] = group_scale

    def quantize_column(j, column):
        signs_h[:, j] = column >= 0
        return group_scale * torch.where(column >= 0, 1.0, -1.0).to(column)

    # Alternate: signs by the error-feedback sweep for given scales, then the output-optimal scales for
    # those signs (a few rounds; each round can only lower the calibration error it is scored on).
    best_round = None
    for _ in range(rounds if stats is not None else 1):
        obs_sweep(wh.clone(), f_haar, quantize_column, block=group_size, start_block=start_block)
        if stats is not None:
            scale_values = _refit_group_scales(w0, stats.hessian.to(w), order, s, q_sal, signs_h, haar, kn,
                                               group_size, scale_values)
        candidate = (signs_h.clone(), scale_values.clone())
        error = _haar_round_error(w0, stats, order, s, q_sal, candidate, haar, kn, group_size)
        if best_round is None or error < best_round[0]:
            best_round = (error, candidate)
        fixed_scales[0] = scale_values.clone()
    signs_h, scale_values = best_round[1]
    code_np, base = formats.encode_log_scales(_np(scale_values))
    packed = formats.pack_haar_binary(
        haar_signs=_np(signs_h), scale_codes=code_np, scale_base=float(base), salient_idx=_np(salient),
        salient_signs=_np(s1), salient_residual_signs=_np(s2), salient_scales=_np(torch.stack([a1, a2])),
        in_features=k, group_size=group_size)
    dense = torch.tensor(formats.unpack_haar_binary(packed), dtype=w.dtype, device=w.device)
    if stats is not None:
        err = torch.einsum("ik,kl,il->", dense - w0, stats.second_moment.to(w), dense - w0)
    else:
        err = ((dense - w0) ** 2).sum()
    return packed, float(err)


def _refit_group_scales(w0, h, order, s, q_sal, signs_h, haar, kn, group_size, fallback):
    """With every sign fixed, the group scales that minimise the layer's output error given the quantized
    salient part: per row, solve (V^T H V) a = V^T H (w - q_salient), where column g of V is group g's
    +-1 pattern mapped back from the Haar domain into the non-salient input columns. Negative or singular
    solutions keep the sweep's scale."""
    n, k = w0.shape
    kh = signs_h.shape[1]
    groups = kh // group_size
    pattern = torch.where(signs_h, 1.0, -1.0).to(w0).reshape(n, groups, group_size)
    back = torch.zeros(n, groups, kh, dtype=w0.dtype, device=w0.device)
    for g in range(groups):
        back[:, g, g * group_size:(g + 1) * group_size] = pattern[:, g]
    back = back @ haar  # inverse Haar (P is orthonormal): [N, G, Kh]
    v = torch.zeros(n, groups, k, dtype=w0.dtype, device=w0.device)
    v[:, :, order[s:]] = back[:, :, :kn]
    target = w0.clone()
    target[:, order[:s]] -= q_sal
    hv = v @ h  # [N, G, K]
    gram = hv @ v.transpose(1, 2)  # [N, G, G]
    rhs = (hv @ target[:, :, None])[:, :, 0]
    gram += 1e-9 * gram.diagonal(dim1=1, dim2=2).mean(-1, keepdim=True)[:, :, None] * torch.eye(
        groups, dtype=w0.dtype, device=w0.device)
    solved = torch.linalg.solve(gram, rhs)
    ok = torch.isfinite(solved) & (solved > 0)
    return torch.where(ok, solved, fallback)


def hbvla(weight: torch.Tensor, stats: LayerStats | None, *, max_bits: float = 1.1, group_size: int | None = None,
          salient_candidates: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.04), damping: float = 0.01,
          rounds: int = 3):
    """HBVLA-style 1-bit (see `_hbvla_once`): tries a few salient-column counts and keeps the one with the
    lowest (policy-weighted) output error whose storage fits `max_bits` bits per weight."""
    n, k = weight.shape
    best = None
    tried = set()
    for fraction in salient_candidates:
        count = int(round(fraction * k))
        if count in tried or count >= k:
            continue
        tried.add(count)
        kh = formats.haar_padded_length(k - count)
        if _hbvla_bits(n, k, count, kh, kh) > max_bits and count > 0:
            continue
        packed, err = _hbvla_once(weight, stats, count, group_size, damping, max_bits, rounds)
        if best is None or err < best[1]:
            best = (packed, err)
    return best[0]


# -------------------------------------------------------------------------------------------- nm
def _nm_mask_from_scores(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Top-n scores per group of m along the input dimension (ties to the lower index)."""
    rows, k = score.shape
    kp = formats.padded_length(k, m)
    padded = torch.full((rows, kp), -1.0, dtype=score.dtype, device=score.device)
    padded[:, :k] = score
    groups = padded.reshape(rows, kp // m, m)
    # stable: sort by (-score, index)
    order = torch.argsort(-groups, dim=2, stable=True)[:, :, :n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order, True)
    return mask.reshape(rows, kp)[:, :k]


def nm(weight: torch.Tensor, stats: LayerStats | None, *, n: int = 2, m: int = 4, criterion: str = "magnitude",
       damping: float = 0.01):
    """N:M structured sparsity. criterion: magnitude (|w|), wanda (|w| * ||x_j||), sparsegpt (OBS: prune by
    w^2 / [H^-1]_jj^2 group by group and update the remaining weights to compensate)."""
    if criterion not in ("magnitude", "wanda", "sparsegpt"):
        raise ValueError(f"unknown N:M criterion {criterion!r}; choose magnitude, wanda or sparsegpt")
    if criterion != "magnitude" and stats is None:
        raise ValueError(f"criterion {criterion!r} needs calibration data (calibration=...)")
    w = weight.clone()
    rows, k = w.shape
    if criterion == "magnitude":
        mask = _nm_mask_from_scores(w.abs(), n, m)
        return formats.pack_nm(_np(w).astype(np.float32), n=n, m=m, mask=_np(mask))
    if criterion == "wanda":
        column_norm = torch.sqrt(torch.diag(stats.second_moment).to(w).clamp_min(0))
        mask = _nm_mask_from_scores(w.abs() * column_norm[None, :], n, m)
        return formats.pack_nm(_np(w).astype(np.float32), n=n, m=m, mask=_np(mask))
    factor = damped_inverse_cholesky(stats.hessian.to(w), damping).to(w)
    mask = torch.zeros(rows, k, dtype=torch.bool, device=w.device)
    hinv_diag = torch.diag(factor)

    def quantize_column(j, column):
        if j % m == 0:  # choose this group's kept weights from the updated values
            cols = slice(j, min(j + m, k))
            score = w[:, cols].pow(2) / hinv_diag[cols].pow(2)[None, :]
            mask[:, cols] = _nm_mask_from_scores(score, n, m)[:, : cols.stop - cols.start]
        return torch.where(mask[:, j], column, torch.zeros_like(column))

    block = max(m, (128 // m) * m)
    q = obs_sweep(w, factor, quantize_column, block=block)
    return formats.pack_nm(_np(q).astype(np.float32), n=n, m=m, mask=_np(mask))


# ------------------------------------------------------------------------------------ dense_sparse
def _omp_columns(dictionary: torch.Tensor, w: torch.Tensor, nonzeros: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal matching pursuit for every column of w at once: (atom indices [K, s], values [K, s]).

    Works on the Gram matrix G = D^T D and the projections P = D^T W, so no N-long residual is ever formed:
    the residual's correlation with the atoms is P - G[:, chosen] @ values, and the least-squares values on
    the chosen atoms solve G[chosen, chosen] v = P[chosen] (a t x t system per column)."""
    k = w.shape[1]
    gram = dictionary.T @ dictionary  # [A, A]
    proj = dictionary.T @ w  # [A, K]
    norms = torch.sqrt(torch.diag(gram)).clamp_min(1e-12)
    columns = torch.arange(k, device=w.device)
    chosen = torch.zeros(k, 0, dtype=torch.long, device=w.device)
    values = torch.zeros(k, 0, dtype=w.dtype, device=w.device)
    ridge = 1e-12 * torch.diag(gram).mean().clamp_min(1e-300)
    for t in range(nonzeros):
        corr = ((proj - torch.einsum("akt,kt->ak", gram[:, chosen], values)) / norms[:, None]).abs()
        corr[chosen.T, columns[None, :].expand(t, k)] = -1.0  # an atom is picked once per column
        chosen = torch.cat([chosen, corr.argmax(0)[:, None]], dim=1)
        sub = gram[chosen[:, :, None], chosen[:, None, :]]  # [K, t, t]
        sub = sub + ridge * torch.eye(t + 1, dtype=w.dtype, device=w.device)
        values = torch.linalg.solve(sub, proj[chosen, columns[:, None]])  # [K, t]
    return chosen, values


def dense_sparse_shape_for_bits(out_features: int, in_features: int, bits_per_weight: float) -> tuple[int, int]:
    """The largest (atoms, nonzeros = atoms // 2) whose packed size fits `bits_per_weight`; (2, 1), the
    smallest factorization, when even that does not fit (small layers: the report shows the real bits)."""
    best = (2, 1)
    for atoms in range(2, min(out_features, in_features) + 1):
        attrs = {"in_features": in_features, "atoms": atoms, "nonzeros": atoms // 2}
        if 8.0 * formats.packed_nbytes("dense_sparse", out_features, attrs) > bits_per_weight * out_features * in_features:
            break
        best = (atoms, atoms // 2)
    return best


def dense_sparse(weight: torch.Tensor, stats: LayerStats | None, *, atoms: int | None = None,
                 nonzeros: int | None = None, bits_per_weight: float = 2.0, iterations: int = 10):
    """W ~ D S (CoSpaDi style): D [N, A] dense atoms, S [A, K] with `nonzeros` entries per column.

    Without `atoms`, the shape comes from `bits_per_weight`, a target in stored bits (float16 atoms and codes
    plus the 8/16-bit atom indices): the most atoms that fit, at least 2; `nonzeros` defaults to atoms // 2.
    Measured on the 10.8 M reach policy, few atoms with many codes per column beat many atoms with few codes
    at equal bits by a wide margin (attn.v 384x384: 24 atoms x 16 codes, 2.0 bits, NMSE 0.008; 96 x 4, 4.25 bits, NMSE 0.30).
    Alternates: S by orthogonal matching pursuit per input column (the column's error is weighted by its
    activation energy H_jj, a constant per column, so OMP's choice is unchanged); D in closed form for the
    calibration-output error tr((W - D S) H (W - D S)^T): D = W H S^T (S H S^T)^-1. Keeps the best iterate.
    """
    w = weight
    n, k = w.shape
    if atoms is None:
        atoms, _ = dense_sparse_shape_for_bits(n, k, bits_per_weight)
    if nonzeros is None:
        nonzeros = max(1, atoms // 2)
    if not (0 < nonzeros <= atoms):
        raise ValueError(f"need 0 < nonzeros <= atoms, got nonzeros={nonzeros}, atoms={atoms}")
    h = stats.hessian.to(w) if stats is not None else torch.eye(k, dtype=w.dtype, device=w.device)
    h = h + 1e-6 * torch.diag(h).mean() * torch.eye(k, dtype=w.dtype, device=w.device)
    scale = torch.sqrt(torch.diag(h).clamp_min(1e-12))
    u, sv, _ = torch.linalg.svd(w * scale[None, :], full_matrices=False)
    rank = min(atoms, sv.numel())
    dictionary = u[:, :rank] * sv[:rank] / sv[:rank].mean().clamp_min(1e-12)
    if rank < atoms:  # more atoms than the matrix has directions: start the rest from seeded noise
        generator = torch.Generator(device="cpu").manual_seed(0)
        extra = torch.randn(n, atoms - rank, generator=generator, dtype=w.dtype).to(w.device)
        dictionary = torch.cat([dictionary, extra / extra.norm(dim=0).clamp_min(1e-12)], dim=1)
    best = None
    for _ in range(max(1, iterations)):
        idx, values = _omp_columns(dictionary, w, nonzeros)
        sparse = torch.zeros(atoms, k, dtype=w.dtype, device=w.device)
        sparse.scatter_(0, idx.T, values.T)
        delta = w - dictionary @ sparse
        error = float(torch.einsum("ik,kl,il->", delta, h, delta))
        if best is None or error < best[0]:
            best = (error, dictionary.clone(), idx.clone(), values.clone())
        gram = sparse @ h @ sparse.T
        gram += 1e-8 * torch.trace(gram) / atoms * torch.eye(atoms, dtype=w.dtype, device=w.device)
        dictionary = torch.linalg.solve(gram, (w @ h @ sparse.T).T).T
    _, dictionary, idx, values = best
    dictionary, values = balance_atoms(dictionary, idx, values)
    return formats.pack_dense_sparse(dictionary=_np(dictionary), values=_np(values), atom_idx=_np(idx))


def balance_atoms(dictionary: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """D S is unchanged by scaling atom a by c and its codes by 1/c; choose c so that max |D[:, a]| equals the
    largest |value| coding with atom a. Both factors are stored in float16, and the closed-form D update
    can push an atom that few columns use to values far beyond float16's 65504 (seen on the 10.8 M policy);
    balanced, each factor holds about the square root of the product's range."""
    atoms = dictionary.shape[1]
    atom_max = dictionary.abs().amax(0)
    code_max = torch.zeros(atoms, dtype=values.dtype, device=values.device).scatter_reduce(
        0, idx.reshape(-1), values.abs().reshape(-1), reduce="amax")
    used = (atom_max > 0) & (code_max > 0)
    c = torch.where(used, torch.sqrt(code_max / atom_max.clamp_min(1e-300)), torch.ones_like(atom_max))
    return dictionary * c[None, :], values / c[idx]


# ------------------------------------------------------------------------------------ group_sparse
def group_sparse(weight: torch.Tensor, stats: LayerStats | None, *, group: int = 4, sparsity: float = 0.5):
    """Row-balanced fine-grained group sparsity (SparseByteNN style): each row keeps the same number of
    groups of `group` consecutive inputs, those with the largest sum of w^2 * H_jj (w^2 without data);
    with calibration data the kept weights are then updated (OBS) to compensate for the pruned ones."""
    if not (0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    n, k = weight.shape
    kp = formats.padded_length(k, group)
    energy = weight.pow(2)
    if stats is not None:
        energy = energy * torch.diag(stats.hessian).to(weight)[None, :]
    padded = torch.zeros(n, kp, dtype=weight.dtype, device=weight.device)
    padded[:, :k] = energy
    score = padded.reshape(n, kp // group, group).sum(2)
    kept = max(1, int(round((1.0 - sparsity) * (kp // group))))
    order = torch.argsort(-score, dim=1, stable=True)[:, :kept]
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(1, order, True)
    values = weight
    if stats is not None:  # OBS: zero the pruned weights one column at a time and compensate the rest
        mask = keep.repeat_interleave(group, dim=1)[:, :k]
        factor = damped_inverse_cholesky(stats.hessian.to(weight), 0.01).to(weight)
        values = obs_sweep(weight.clone(), factor, lambda j, col: torch.where(mask[:, j], col, torch.zeros_like(col)))
    return formats.pack_group_sparse(_np(values).astype(np.float32), group=group, keep=_np(keep))


# ------------------------------------------------------------------------------------------ budget
def solve_multiple_choice_knapsack(costs: list[list[float]], errors: list[list[float]], budget: float,
                                   resolution: int = 2000) -> list[int]:
    """Pick one option per layer minimising the summed error with summed cost <= budget (ROCKET's
    allocation). Dynamic programming over costs rounded up to budget/resolution units, so a returned
    choice always fits the budget. Raises if even the cheapest choices do not fit."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    unit = budget / resolution
    int_costs = [[math.ceil(c / unit - 1e-9) for c in layer] for layer in costs]
    infinity = float("inf")
    best = [0.0] + [infinity] * resolution  # best[c]: least summed error with exactly c cost units used
    picks: list[list[int]] = []  # picks[layer][c]: the option that reached state c at that layer
    for layer_costs, layer_errors in zip(int_costs, errors):
        new = [infinity] * (resolution + 1)
        pick = [-1] * (resolution + 1)
        for c, so_far in enumerate(best):
            if so_far == infinity:
                continue
            for option, (cost, error) in enumerate(zip(layer_costs, layer_errors)):
                total = c + cost
                if total <= resolution and so_far + error < new[total]:
                    new[total], pick[total] = so_far + error, option
        picks.append(pick)
        best = new
    end = min(range(resolution + 1), key=lambda c: best[c])
    if best[end] == infinity:
        cheapest = sum(min(layer) for layer in costs)
        raise ValueError(f"budget {budget:g} is below the cheapest possible choice ({cheapest:g})")
    selected = []
    for pick, layer_costs in zip(reversed(picks), reversed(int_costs)):
        option = pick[end]
        selected.append(option)
        end -= layer_costs[option]
    return selected[::-1]


DEFAULT_BUDGET_CANDIDATES = (
    ("hbvla", {}),
    ("nm", {"n": 1, "m": 4, "criterion": "sparsegpt"}),
    ("nm", {"n": 2, "m": 4, "criterion": "sparsegpt"}),
    ("nm", {"n": 4, "m": 8, "criterion": "sparsegpt"}),
)


METHODS: dict[str, Callable] = {"sign": sign, "billm": billm, "hbvla": hbvla, "nm": nm,
                                "dense_sparse": dense_sparse, "group_sparse": group_sparse}
METHOD_OPTIONS: dict[str, set[str]] = {
    "sign": {"group_size"},
    "billm": {"block_size", "salient_fraction", "damping"},
    "hbvla": {"max_bits", "group_size", "salient_candidates", "damping", "rounds"},
    "nm": {"n", "m", "criterion", "damping"},
    "dense_sparse": {"atoms", "nonzeros", "bits_per_weight", "iterations", "finetune_loss", "finetune_steps",
                     "finetune_lr"},
    "group_sparse": {"group", "sparsity"},
    "budget": {"candidates", "budget_bytes", "bits_per_weight", "cost_table", "budget_seconds"},
}
NEEDS_CALIBRATION = {"billm", "hbvla", "dense_sparse", "budget"}
POLICY_AWARE = {"hbvla"}
