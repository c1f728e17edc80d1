"""The network: two towers (tower.py), their grouped single-process form (grouped.py), the shared layout."""

from alexserve.model.grouped import AlexNetGrouped
from alexserve.model.layout import join_tower_states, split_grouped_state
from alexserve.model.tower import EXCHANGE_POINTS, AlexNetTower

__all__ = ["AlexNetGrouped", "AlexNetTower", "EXCHANGE_POINTS", "join_tower_states", "split_grouped_state"]
