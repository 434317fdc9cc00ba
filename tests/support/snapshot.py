"""Every figure the read side gives for one window, as plain JSON values: what the upgrade and the
backup tests compare (a store before and after, or a saved file against a store)."""

from __future__ import annotations

import dataclasses
import enum
import math
from datetime import date, datetime, timedelta
from typing import Any

from core.plant import Plant
from core.readside import Figures
from core.store.base import Store


def plain(x: Any) -> Any:
    """Dataclasses (and their tuples, dicts, times) as JSON values, keys as strings."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (frozenset, set)):
        return sorted(plain(v) for v in x)
    if isinstance(x, (datetime, date)):
        return x.isoformat()
    if isinstance(x, timedelta):
        return x.total_seconds()
    if isinstance(x, enum.Enum):
        return plain(x.value)
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if hasattr(x, "key") and hasattr(x, "tzname"):  # a ZoneInfo
        return str(x.key)
    return repr(x)


def differences(a: Any, b: Any, path: str = "", exact_types: bool = False) -> list[str]:
    """Where two plain values differ; floats may differ by at most 1e-9. Ints and floats compare as numbers
    (JSON writes 2.0 as 2.0 but a reader may give 2) unless ``exact_types``: then 2 and 2.0 differ too."""
    if exact_types and type(a) is not type(b):
        return [f"{path}: {a!r} ({type(a).__name__}) != {b!r} ({type(b).__name__})"]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return [] if math.isclose(a, b, rel_tol=0, abs_tol=1e-9) else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))} differ"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}", exact_types)]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in differences(x, y, f"{path}[{i}]", exact_types)]
    if a != b:
        return [f"{path}: {a!r} != {b!r}"]
    return []


async def figures_snapshot(plant: Plant, store: Store, start: datetime, end: datetime,
                           shift: tuple[str, str] | None = None) -> dict[str, Any]:
    """OEE (window and hourly buckets) of every line and machine, downtime with its Pareto, hourly
    throughput, the stop list and the notes of every line, each machine's state stretches, and, with
    ``shift`` (id, local date), that shift's report as at ``end``."""
    fig = Figures(plant, store)
    w = fig.window(end, start, end, None, None)
    out: dict[str, Any] = {"window": [start.isoformat(), end.isoformat()], "lines": {}, "machines": {}}
    for line in plant.lines:
        whole, buckets = await fig.oee(line, w, "1h")
        out["lines"][line.id] = {
            "oee": plain(whole), "oee_1h": plain(buckets),
            "downtime": plain(await fig.downtime(line, w)),
            "throughput_1h": plain(await fig.throughput(line, w, "1h")),
            "stops": plain(await fig.stop_list(line, w)),
            "notes": plain(await fig.notes(line, w)),
        }
        for m in line.machines:
            mwhole, _ = await fig.oee(m, w)
            out["machines"][m.id] = {"oee": plain(mwhole), "states": plain(await fig.states(m, w))}
    if shift is not None:
        out["shift_report"] = plain(await fig.shift_report(shift[0], shift[1], end))
    return out
