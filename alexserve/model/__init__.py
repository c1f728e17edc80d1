"""The network: two towers (tower.py), their grouped single-process form (grouped.py), the shared layout."""

from alexserve.model.grouped import AlexNetGrouped
from alexserve.model.tower import AlexNetTower
from alexserve.model.tower_split import join_tower_states, split_grouped_state

__all__ = ["AlexNetGrouped", "AlexNetTower", "join_tower_states", "split_grouped_state"]
