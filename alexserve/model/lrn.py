"""Local response normalization across channels, in either of the paper's two readings.

    b[i] = a[i] / (k + c * sum_{j=i-n/2}^{i+n/2} a[j]^2) ** beta

The paper prints c = alpha. The authors' code divides it by the window
(cuda-convnet's layer.py: `dic['scale'] /= dic['size']`; Caffe: alpha / local_size),
so the network behind the paper's results used c = alpha / n: that is the default
(`model.lrn_alpha_convention: authors_code`), and torch's `local_response_norm`
computes exactly it. The printed formula passes alpha * n to torch. In the
grouped single-process model the channel window must not cross from one tower's
maps into the other's (each of the paper's GPUs normalised only its own
kernels), hence `groups`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alexserve.config import ModelConfig


def torch_lrn_alpha(alpha: float, size: int, convention: str) -> float:
    """The alpha to hand torch, which divides it by the window size `size`."""
    return alpha if convention == "authors_code" else alpha * size


def paper_lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    """LRN with torch's alpha convention (sum of squares divided by `size`), within `groups` channel groups."""
    if groups == 1:
        return F.local_response_norm(x, size, alpha=alpha, beta=beta, k=k)
    b, c, h, w = x.shape
    per_group = x.reshape(b * groups, c // groups, h, w)
    return F.local_response_norm(per_group, size, alpha=alpha, beta=beta, k=k).reshape(b, c, h, w)


class PaperLRN(nn.Module):
    def __init__(self, cfg: ModelConfig, groups: int = 1):
        super().__init__()
        self.size, self.beta, self.k = cfg.lrn_size, cfg.lrn_beta, cfg.lrn_k
        self.alpha = torch_lrn_alpha(cfg.lrn_alpha, cfg.lrn_size, cfg.lrn_alpha_convention)
        self.convention = cfg.lrn_alpha_convention
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return paper_lrn(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, torch alpha={self.alpha} ({self.convention}), beta={self.beta}, k={self.k}, "
            f"groups={self.groups}"
        )
