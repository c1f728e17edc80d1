"""Both towers in one module: the paper's net in its grouped form.

conv2, conv4 and conv5 are `groups=2` convolutions (each group is one tower);
conv3, fc6, fc7 and fc8 read every input, which is what the towers' exchanges
provide. LRN normalises within a group, as each of the paper's GPUs did. The
parameters are the towers' concatenated (see layout.py), so this is both the
one-GPU mode and the reference the distributed towers are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alexserve.config import ModelConfig
from alexserve.model.dropout import shared_dropout
from alexserve.model.lrn import PaperLRN
from alexserve.model.tower import AlexNetTower
from alexserve.model.tower_split import join_tower_states, split_grouped_state


class AlexNetGrouped(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c1, c2, c3, c4, c5 = cfg.conv_channels
        k1, k2, k3, k4, k5 = cfg.conv_kernel_sizes
        fc = cfg.fc_neurons
        self.conv1 = nn.Conv2d(3, 2 * c1, k1, stride=cfg.conv1_stride, padding=cfg.conv1_padding)
        self.conv2 = nn.Conv2d(2 * c1, 2 * c2, k2, padding=k2 // 2, groups=2)
        self.conv3 = nn.Conv2d(2 * c2, 2 * c3, k3, padding=k3 // 2)
        self.conv4 = nn.Conv2d(2 * c3, 2 * c4, k4, padding=k4 // 2, groups=2)
        self.conv5 = nn.Conv2d(2 * c4, 2 * c5, k5, padding=k5 // 2, groups=2)
        self.fc6 = nn.Linear(cfg.fc6_inputs, 2 * fc)
        self.fc7 = nn.Linear(2 * fc, 2 * fc)
        self.fc8 = nn.Linear(2 * fc, cfg.classes)
        self.input_divisor = cfg.input_divisor
        self.lrn = PaperLRN(cfg, groups=2)
        self.pool = nn.MaxPool2d(cfg.pool_kernel, cfg.pool_stride)

    @classmethod
    def from_seed(cls, cfg: ModelConfig, seed: int) -> AlexNetGrouped:
        """The same initial weights the two tower processes draw for this seed."""
        towers = [AlexNetTower(cfg, t) for t in (0, 1)]
        for tower in towers:
            tower.reset_parameters(seed)
        model = cls(cfg)
        model.load_state_dict(join_tower_states(cfg, [t.state_dict() for t in towers]))
        return model

    def tower_states(self) -> list[dict[str, torch.Tensor]]:
        return split_grouped_state(self.cfg, self.state_dict())

    def _dropout(self, h: torch.Tensor, layer: str, dropout_seed: int | None) -> torch.Tensor:
        if not self.training or dropout_seed is None:
            return h
        return shared_dropout(h, self.cfg.dropout, dropout_seed, layer, h.shape[1], 0)

    def forward(self, images: torch.Tensor, dropout_seed: int | None = None) -> torch.Tensor:
        h = self.pool(self.lrn(F.relu(self.conv1(images / self.input_divisor))))
        h = self.pool(self.lrn(F.relu(self.conv2(h))))
        h = F.relu(self.conv3(h))
        h = F.relu(self.conv4(h))
        h = self.pool(F.relu(self.conv5(h)))
        h = torch.flatten(h, 1)
        h = self._dropout(F.relu(self.fc6(h)), "fc6", dropout_seed)
        h = self._dropout(F.relu(self.fc7(h)), "fc7", dropout_seed)
        return self.fc8(h)
