"""Local response normalization exactly as the paper writes it.

    b[i] = a[i] / (k + alpha * sum_{j=i-n/2}^{i+n/2} a[j]^2) ** beta

torch's `local_response_norm` divides alpha by n (it averages the squares), so
the paper's alpha is passed as `alpha * n`. In the grouped single-process model
the channel window must not cross from one tower's maps into the other's (each
of the paper's GPUs normalised only its own kernels), hence `groups`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alexserve.config import ModelConfig


def paper_lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    if groups == 1:
        return F.local_response_norm(x, size, alpha=alpha * size, beta=beta, k=k)
    b, c, h, w = x.shape
    per_group = x.reshape(b * groups, c // groups, h, w)
    return F.local_response_norm(per_group, size, alpha=alpha * size, beta=beta, k=k).reshape(b, c, h, w)


class PaperLRN(nn.Module):
    def __init__(self, cfg: ModelConfig, groups: int = 1):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = cfg.lrn_size, cfg.lrn_alpha, cfg.lrn_beta, cfg.lrn_k
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return paper_lrn(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha} (paper's, not /n), beta={self.beta}, k={self.k}, groups={self.groups}"
