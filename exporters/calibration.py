"""Layer statistics from calibration data, gathered one layer at a time.

For each layer being compressed we need its input second moment (the Hessian of the layer-wise squared
error, H = 2/n sum x x^T), the input sum (for exact output-error accounting with a bias) and, for the
policy-aware variant, a weight per input row saying how much that row moves the action output.
Only one layer's statistics exist at a time, and activations are never stored: the hooks accumulate sums.
On a GPU (when torch sees one) the accumulation runs there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass
class LayerStats:
    """Accumulated statistics of one Linear layer's inputs (rows = tokens x batch)."""

    second_moment: torch.Tensor  # [K, K] float64: sum over rows of weight_r * x_r x_r^T
    input_sum: torch.Tensor  # [K] float64: sum over rows of weight_r * x_r
    rows: float  # sum of row weights (the row count when unweighted)
    policy_aware: bool  # rows weighted by their effect on the action output

    @property
    def hessian(self) -> torch.Tensor:
        """H = 2/n sum x x^T (weighted when policy-aware)."""
        return 2.0 * self.second_moment / max(self.rows, 1e-12)

    def output_error(self, reference: torch.Tensor, approx: torch.Tensor, bias: torch.Tensor | None) -> float:
        """||(W' - W) X|| / ||W X + b|| over the calibration rows, exactly, from the accumulated sums."""
        delta = (approx - reference).to(self.second_moment)
        w = reference.to(self.second_moment)
        num = torch.einsum("ik,kl,il->", delta, self.second_moment, delta)
        den = torch.einsum("ik,kl,il->", w, self.second_moment, w)
        if bias is not None:
            b = bias.to(self.second_moment)
            den = den + 2.0 * b @ (w @ self.input_sum) + self.rows * (b @ b)
        return float(torch.sqrt(num.clamp_min(0) / den.clamp_min(1e-30)))


def compute_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _call(model: nn.Module, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def collect_layer_stats(model: nn.Module, layer_name: str, calibration: Sequence, *,
                        policy_aware: bool = False, device: torch.device | None = None) -> LayerStats:
    """Run the calibration batches through `model` and accumulate the statistics of `layer_name`'s input.

    Policy-aware weighting (HBVLA-style; the model's output must be batch-first): each input row r of the layer gets weight
    g_r = sum_a ||d action_a / d y_r||^2, the squared norm of the Jacobian of every action output with
    respect to that row's layer output y_r (exact: one backward pass per action entry). Rows that do not
    influence the action (for example tokens whose last-block MLP output is never read) get weight 0;
    weights are normalised to mean 1 and floored at 1e-3 so that H stays well conditioned.
    """
    device = device or compute_device()
    layer = model.get_submodule(layer_name)
    k = layer.weight[0].numel()
    conv = isinstance(layer, nn.Conv2d)
    second = torch.zeros(k, k, dtype=torch.float64, device=device)
    total = torch.zeros(k, dtype=torch.float64, device=device)
    rows = 0.0
    captured: dict[str, torch.Tensor] = {}

    def pre_hook(module, args):
        captured["x"] = args[0].detach()

    def fwd_hook(module, args, output):
        if policy_aware:
            output.retain_grad()
            captured["y"] = output

    handles = [layer.register_forward_pre_hook(pre_hook), layer.register_forward_hook(fwd_hook)]
    try:
        for i, batch in enumerate(calibration):
            try:
                if policy_aware:
                    with torch.enable_grad():
                        output = _call(model, batch)
                        actions = output.reshape(output.shape[0], -1)
                        y = captured["y"]
                        row_shape = (y.shape[0], *y.shape[2:]) if conv else y.shape[:-1]
                        weight = torch.zeros(row_shape, dtype=torch.float64, device=y.device)
                        # Samples of a batch are independent, so d(sum over the batch of action a)/dy gives
                        # every sample's own gradient: one backward pass per action entry, not per sample.
                        for a in range(actions.shape[1]):
                            (grad,) = torch.autograd.grad(actions[:, a].sum(), y, retain_graph=True)
                            # sum over the features of each row: last dim (Linear), channels (Conv2d)
                            weight += grad.pow(2).sum(1 if conv else -1).to(torch.float64)
                else:
                    with torch.no_grad():
                        _call(model, batch)
            except (RuntimeError, TypeError, ValueError) as e:
                raise ValueError(f"calibration batch {i} does not fit the model: {e}") from e
            x = captured["x"]
            if conv:  # im2col rows, one per output position: [B, K, L] -> [B*L, K]
                x = torch.nn.functional.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
                x = x.transpose(1, 2)
            x = x.reshape(-1, k).to(device=device, dtype=torch.float64)
            if policy_aware:
                r = weight.reshape(-1).to(device)
                r = (r / r.mean().clamp_min(1e-30)).clamp_min(1e-3)
            else:
                r = torch.ones(x.shape[0], dtype=torch.float64, device=device)
            second += (x * r[:, None]).T @ x
            total += (x * r[:, None]).sum(0)
            rows += float(r.sum())
    finally:
        for h in handles:
            h.remove()
    if rows == 0:
        raise ValueError(f"calibration produced no inputs for layer {layer_name!r}: is the iterable empty?")
    return LayerStats(second, total, rows, policy_aware)


def damped_inverse_cholesky(hessian: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor of (H + damping * mean(diag H) I)^-1, as GPTQ/BiLLM/SparseGPT use it.

    Dead inputs (zero diagonal) get a unit diagonal so the inverse exists; their weights do not matter.
    """
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damping * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(5):
        try:
            chol = torch.linalg.cholesky(h)
            inverse = torch.cholesky_inverse(chol)
            return torch.linalg.cholesky(inverse, upper=True)
        except torch.linalg.LinAlgError:
            h += damping * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    raise ValueError("the calibration Hessian is not positive definite even after dampening; "
                     "use more calibration samples")
