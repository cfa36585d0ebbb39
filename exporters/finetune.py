"""Straight-through fine-tuning of dense x sparse layers (DSFormer style), given a loss.

Each dense_sparse layer is opened up into a trainable dictionary D [N, A] and a dense code matrix
S [A, K]; the forward pass uses D @ topk(S), keeping the `nonzeros` largest |S| of every column, and the
backward pass treats the top-k selection as the identity (straight-through), so codes outside the current
support can grow into it. After the steps the layers are packed again with the support they ended with.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from edgevla.runtime import formats
from .packed_layers import PackedLinear, packed_linear, replace_module


def _column_topk_mask(codes: torch.Tensor, nonzeros: int) -> torch.Tensor:
    index = codes.abs().topk(nonzeros, dim=0).indices
    return torch.zeros_like(codes, dtype=torch.bool).scatter_(0, index, True)


class _TrainableDenseSparse(nn.Module):
    def __init__(self, layer: PackedLinear):
        super().__init__()
        packed = layer.packed()
        a = packed.arrays
        atoms, k = packed.attrs["atoms"], packed.attrs["in_features"]
        codes = np.zeros((atoms, k), dtype=np.float32)
        np.add.at(codes, (a["atom_idx"].astype(np.int64).reshape(-1), np.repeat(np.arange(k), packed.attrs["nonzeros"])),
                  a["values"].astype(np.float32).reshape(-1))
        self.dictionary = nn.Parameter(torch.from_numpy(a["dictionary"].astype(np.float32)))
        self.codes = nn.Parameter(torch.from_numpy(codes))
        self.nonzeros = packed.attrs["nonzeros"]
        self.bias = layer.bias
        self.original = layer

    def sparse_codes(self) -> torch.Tensor:
        """Value: the top-k codes of each column; gradient: the identity for every code (straight-through)."""
        mask = _column_topk_mask(self.codes.detach(), self.nonzeros)
        return self.codes * mask + (self.codes - self.codes.detach()) * ~mask

    def forward(self, x):
        weight = self.dictionary @ self.sparse_codes()
        y = x @ weight.T
        return y if self.bias is None else y + self.bias

    def repack(self) -> formats.PackedWeight:
        codes = self.codes.detach()
        mask = _column_topk_mask(codes, self.nonzeros)
        idx = torch.sort(codes.abs().topk(self.nonzeros, dim=0).indices, dim=0).values.T  # [K, s]
        values = torch.gather((codes * mask).T, 1, idx)
        return formats.pack_dense_sparse(dictionary=self.dictionary.detach().numpy(), values=values.numpy(),
                                         atom_idx=idx.numpy())


def finetune_dense_sparse(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], *, steps: int = 100,
                          learning_rate: float = 1e-3) -> list[float]:
    """Fine-tune every dense_sparse layer of `model` in place; returns the loss per step.

    Only the dictionaries and codes train; every other parameter is frozen for the duration.
    """
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, PackedLinear) and m.format_name == "dense_sparse" and not hasattr(m, "kernel_size")]
    if not layers:
        raise ValueError("the model has no dense_sparse Linear layers to fine-tune")
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    trainable = {}
    for name, layer in layers:
        trainable[name] = _TrainableDenseSparse(layer)
        replace_module(model, name, trainable[name])
    params = [p for t in trainable.values() for p in (t.dictionary, t.codes)]
    optimiser = torch.optim.Adam(params, lr=learning_rate)
    history = []
    try:
        model.train()
        for _ in range(steps):
            loss = loss_fn(model)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            history.append(float(loss.detach()))
    finally:
        model.eval()
        for name, t in trainable.items():
            packed = t.repack()
            replace_module(model, name, packed_linear(packed, t.original.bias, method=t.original.method))
        for p in frozen:
            p.requires_grad_(True)
    return history

