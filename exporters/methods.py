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


def _hbvla_once(w0: torch.Tensor, stats: LayerStats | None, salient_count: int, group_size: int | None,
                damping: float, max_bits: float) -> tuple[formats.PackedWeight, float]:
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
    codes = torch.zeros(n, kh // group_size, dtype=torch.uint8)
    group_scale = torch.zeros(n, dtype=w.dtype, device=w.device)
    scale_values = torch.zeros(n, kh // group_size, dtype=w.dtype, device=w.device)

    def start_block(j0, current):
        group_scale.copy_(current.abs().mean(1))
        scale_values[:, j0 // group_size] = group_scale

    signs_h = torch.zeros(n, kh, dtype=torch.bool, device=w.device)

    # Scales are known only after the sweep (they are log-coded once at the end): quantize with the
    # float scale here, then re-derive the coded scale below; the rounding of a 4.4% log step is small.
    def quantize_column(j, column):
        signs_h[:, j] = column >= 0
        return group_scale * torch.where(column >= 0, 1.0, -1.0).to(column)

    obs_sweep(wh, f_haar, quantize_column, block=group_size, start_block=start_block)
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


def hbvla(weight: torch.Tensor, stats: LayerStats | None, *, max_bits: float = 1.1, group_size: int | None = None,
          salient_candidates: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.04), damping: float = 0.01):
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
        packed, err = _hbvla_once(weight, stats, count, group_size, damping, max_bits)
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

    def start_block(j0, current):
        pass

    def quantize_column(j, column):
        if j % m == 0:  # choose this group's kept weights from the updated values
            cols = slice(j, min(j + m, k))
            score = w[:, cols].pow(2) / hinv_diag[cols].pow(2)[None, :]
            mask[:, cols] = _nm_mask_from_scores(score, n, m)[:, : cols.stop - cols.start]
        return torch.where(mask[:, j], column, torch.zeros_like(column))

    block = max(m, (128 // m) * m)
    q = obs_sweep(w, factor, quantize_column, block=block, start_block=start_block)
    return formats.pack_nm(_np(q).astype(np.float32), n=n, m=m, mask=_np(mask))


METHODS: dict[str, Callable] = {"sign": sign, "billm": billm, "hbvla": hbvla, "nm": nm}
METHOD_OPTIONS: dict[str, set[str]] = {
    "sign": {"group_size"},
    "billm": {"block_size", "salient_fraction", "damping"},
    "hbvla": {"max_bits", "group_size", "salient_candidates", "damping"},
    "nm": {"n", "m", "criterion", "damping"},
}
NEEDS_CALIBRATION = {"billm", "hbvla"}
POLICY_AWARE = {"hbvla"}
