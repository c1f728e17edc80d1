"""The peer watchdog over a real store (gloo rank processes): a silent peer is named with the last exchange point
within the timeout; a peer that finished is not taken for lost.

The worker's own end-to-end case (a peer killed or frozen mid-training, exit code 3) is in test_worker.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from alexserve.parallel.topology import Topology
from alexserve.parallel.watchdog import PeerWatchdog
from helpers.processes import rank_main, run_ranks

TIMEOUT = 2.0


def rank_peer_goes_quiet(topology: Topology, out: Path, finished: bool) -> None:
    """Rank 1 beats for a second, then stops: frozen (`finished` false) or done. Rank 0 records what it concludes."""
    lost: list[str] = []
    watchdog = PeerWatchdog(
        topology.rank, topology.world_size, TIMEOUT, on_lost=lost.append, key_prefix=f"test/{finished}"
    )
    watchdog.where.set("fc6", "forward")
    watchdog.start()
    if topology.rank == 1:
        time.sleep(1.0)
        watchdog.stop(finished=finished)
        return
    quiet_from = time.monotonic() + 1.0
    while not lost and time.monotonic() < quiet_from + 3 * TIMEOUT:
        time.sleep(0.05)
    noticed_after = time.monotonic() - quiet_from
    watchdog.stop(finished=True)
    (out / "rank0.json").write_text(json.dumps({"lost": lost, "noticed_after": noticed_after}))


def test_a_silent_peer_is_named_with_the_last_exchange_point_within_the_timeout(tmp_path):
    run_ranks(rank_peer_goes_quiet, tmp_path, finished=False)
    result = json.loads((tmp_path / "rank0.json").read_text())
    assert len(result["lost"]) == 1, result
    message = result["lost"][0]
    assert message.startswith("tower 0 (rank 0) lost its peer, rank 1, at exchange point 'fc6' (forward)"), message
    # Silent for TIMEOUT, noticed at the next beat (a quarter of it later), with a second of slack for the machine.
    assert TIMEOUT <= result["noticed_after"] + 0.5 and result["noticed_after"] < 1.25 * TIMEOUT + 1.0, result


def test_a_peer_that_finished_is_not_lost(tmp_path):
    run_ranks(rank_peer_goes_quiet, tmp_path, finished=True)
    result = json.loads((tmp_path / "rank0.json").read_text())
    assert result["lost"] == [], result


if __name__ == "__main__":
    rank_main()
