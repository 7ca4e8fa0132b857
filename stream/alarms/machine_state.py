"""Whether an asset runs, stands or is in maintenance, as of a given event time.

Readings of the machine-state tag arrive as they are sampled, while fusion's
probabilities arrive later (a window closes after its grace). If the latest
machine state simply applied to whatever came next, live (state reading first,
then the older window) and replay could disagree. So the transitions are kept
with their event time, and an evaluation at time t uses the state at t.

The history is a list of ``[t_us, state]`` transitions in time order, kept in the
asset's changelog state; only transitions are stored, so a PLC that repeats the
same word every second costs nothing.
"""

from __future__ import annotations

from bisect import bisect_right

#: transitions kept per asset: enough to look back over any window lag.
HISTORY_KEPT = 64


def record(history: list, t_us: int, state: str) -> bool:
    """Note that the machine was in ``state`` from ``t_us`` on. True if that changed anything."""
    before = [list(entry) for entry in history]
    i = bisect_right([entry[0] for entry in history], t_us)
    if i > 0 and history[i - 1][0] == t_us:
        history[i - 1][1] = state  # a second value at the same instant: the last one wins
    else:
        history.insert(i, [t_us, state])
    # Keep transitions only: an entry that repeats the state before it says nothing.
    history[:] = [entry for k, entry in enumerate(history) if k == 0 or entry[1] != history[k - 1][1]]
    del history[: max(0, len(history) - HISTORY_KEPT)]
    return history != before


def state_at(history: list, t_us: int) -> str | None:
    """The machine state at ``t_us``; None before the first reading (not known)."""
    i = bisect_right([entry[0] for entry in history], t_us)
    return history[i - 1][1] if i else None


def latest(history: list) -> str | None:
    return history[-1][1] if history else None
