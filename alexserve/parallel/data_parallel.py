"""Data parallel across tower pairs: tower t's gradients averaged over tower t of every pair.

Ranks form a grid of pairs x towers (topology.py). Each pair is model-parallel
exactly as with one pair; the pairs read disjoint shards of each epoch. After
backward, tower t must hold the mean gradient of tower t over all pairs, which
is what one pair would compute on the concatenated batch (the loss is a mean).

The all-reduce of a parameter's gradient starts the moment autograd finishes
accumulating it (a post-accumulate-grad hook), so it overlaps the rest of the
backward pass, including the exchanges; `wait()` blocks only on what is still
in flight. The hooks fire in the same order on every rank of a group (same
graph), which keeps the collectives matched.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from alexserve.parallel.exchange import peers_required
from alexserve.parallel.topology import Topology


def tower_groups(topology: Topology):
    """The data-parallel group of this rank's tower (None with one pair). Collective: every rank calls it."""
    if topology.num_pairs == 1:
        return None
    groups = [dist.new_group(ranks=list(range(tower, topology.world_size, 2))) for tower in (0, 1)]
    return groups[topology.tower]


class GradientAverager:
    """Averages gradients over `group` as they become ready during backward."""

    def __init__(self, module: torch.nn.Module, group, group_size: int):
        self.group, self.scale = group, 1.0 / group_size
        self.pending: list[tuple[torch.Tensor, dist.Work]] = []
        self.seconds_waited = 0.0
        self.handles = [p.register_post_accumulate_grad_hook(self._start) for p in module.parameters() if p.requires_grad]

    def _start(self, param: torch.Tensor) -> None:
        param.grad.mul_(self.scale)
        self.pending.append((param.grad, dist.all_reduce(param.grad, group=self.group, async_op=True)))

    def wait(self) -> None:
        """Blocks until every gradient of this step is averaged; call between backward and the optimizer step."""
        began = time.perf_counter()
        with peers_required(dist.get_rank(), "the data-parallel gradient all-reduce"):
            for _, work in self.pending:
                work.wait()
        self.pending.clear()
        self.seconds_waited += time.perf_counter() - began

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
