"""One of the paper's two towers: half of every layer's kernels and neurons.

The tower never talks to the network itself: at the four places where the
paper's GPUs communicate (before conv3, fc6, fc7 and fc8) it calls an
`Exchange`, which returns both towers' activations concatenated in tower order.
The distributed exchange (alexserve.parallel.exchange) swaps halves over
send/recv; tests can plug in anything with the same call.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from alexserve.config import ModelConfig
from alexserve.contract.names import TOWER_EXCHANGE_POINTS
from alexserve.model.dropout import shared_dropout
from alexserve.model.init import init_tower_
from alexserve.model.lrn import PaperLRN

# Where the towers meet, in network order: before conv3, fc6, fc7 and fc8.
AT_CONV3, AT_FC6, AT_FC7, AT_FC8 = TOWER_EXCHANGE_POINTS


class Exchange(Protocol):
    def __call__(self, point: str, local: torch.Tensor) -> torch.Tensor:
        """Both towers' `local` at `point`, concatenated on dim 1 in tower order."""


class AlexNetTower(nn.Module):
    def __init__(self, cfg: ModelConfig, tower: int):
        super().__init__()
        if tower not in (0, 1):
            raise ValueError(f"tower must be 0 or 1, got {tower}")
        self.cfg, self.tower = cfg, tower
        c1, c2, c3, c4, c5 = cfg.conv_channels
        k1, k2, k3, k4, k5 = cfg.conv_kernel_sizes
        fc = cfg.fc_neurons
        self.conv1 = nn.Conv2d(3, c1, k1, stride=cfg.conv1_stride, padding=cfg.conv1_padding)
        self.conv2 = nn.Conv2d(c1, c2, k2, padding=k2 // 2)
        self.conv3 = nn.Conv2d(2 * c2, c3, k3, padding=k3 // 2)
        self.conv4 = nn.Conv2d(c3, c4, k4, padding=k4 // 2)
        self.conv5 = nn.Conv2d(c4, c5, k5, padding=k5 // 2)
        self.fc6 = nn.Linear(cfg.fc6_inputs, fc)
        self.fc7 = nn.Linear(2 * fc, fc)
        self.fc8 = nn.Linear(2 * fc, cfg.classes_per_tower[tower])
        self.lrn = PaperLRN(cfg)
        self.pool = nn.MaxPool2d(cfg.pool_kernel, cfg.pool_stride)
        self.input_divisor = cfg.input_divisor

    def reset_parameters(self, seed: int) -> None:
        init_tower_(self, self.cfg, self.tower, seed)

    def _dropout(self, h: torch.Tensor, layer: str, dropout_seed: int | None) -> torch.Tensor:
        if not self.training or dropout_seed is None:
            return h
        return shared_dropout(h, self.cfg.dropout, dropout_seed, layer, 2 * h.shape[1], self.tower * h.shape[1])

    def forward(self, images: torch.Tensor, exchange: Exchange, dropout_seed: int | None = None) -> torch.Tensor:
        """This tower's share of the logits (its classes of fc8).

        In training mode dropout needs `dropout_seed` (see model/dropout.py); without one it is off,
        which is what the exactness tests and evaluation use.
        """
        h = self.pool(self.lrn(F.relu(self.conv1(images / self.input_divisor))))
        h = self.pool(self.lrn(F.relu(self.conv2(h))))
        h = F.relu(self.conv3(exchange(AT_CONV3, h)))
        h = F.relu(self.conv4(h))
        h = self.pool(F.relu(self.conv5(h)))
        h = torch.flatten(h, 1)
        h = self._dropout(F.relu(self.fc6(exchange(AT_FC6, h))), "fc6", dropout_seed)
        h = self._dropout(F.relu(self.fc7(exchange(AT_FC7, h))), "fc7", dropout_seed)
        return self.fc8(exchange(AT_FC8, h))
