"""Each machine's state at an instant and since when, from a few bounded store reads.

The status of a line is asked for on every refresh of every screen; reading days of state changes
each time to find since when a machine has been in its state was most of its cost. Instead:

1. one read of the last state change at or before ``as_of`` per machine (the store's "last one
   before the window", an index lookup in SQLite, ``ORDER BY time DESC LIMIT 1`` in InfluxDB);
2. while a machine's change just before the one found has the same state and reason (the
   collector writes the first state again after a restart, so a stretch can be stored twice), one
   more such read for those machines from that change back; at most ``max_steps`` reads in all.

So a machine in one state for weeks costs two reads, not weeks of rows; a stretch written more than
``max_steps - 1`` times in a row is reported from its earliest write found.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.store.base import StateChange, Store

MAX_STEPS = 8


async def current_states(store: Store, machines: Sequence[str], as_of_ns: int,
                         max_steps: int = MAX_STEPS) -> list[StateChange]:
    """Per machine with any state at or before ``as_of_ns``: the change that began the stretch it is
    in at ``as_of_ns`` (its state, reason and time). Machines with none are absent."""
    found = await store.state_changes(list(machines), as_of_ns, as_of_ns + 1)
    first: dict[str, StateChange] = {}
    for c in found:  # ordered by time: the last one per machine is its state at as_of
        first[c.machine] = c
    open_ = dict(first)
    for _ in range(max_steps - 1):
        if not open_:
            break
        # the last change strictly before each open stretch's earliest known write (an empty window)
        earlier: dict[str, StateChange] = {}
        for machine, c in open_.items():
            for p in await store.state_changes([machine], c.time_ns, c.time_ns):
                earlier[p.machine] = p
        next_open: dict[str, StateChange] = {}
        for machine, c in open_.items():
            before = earlier.get(machine)
            if before is not None and (before.state, before.reason) == (c.state, c.reason):
                first[machine] = next_open[machine] = before
        open_ = next_open
    return sorted(first.values(), key=lambda c: (c.time_ns, c.machine))
