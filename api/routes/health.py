from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from starlette.datastructures import State

from api.schemas import Health

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

# A probe gets its answer within a second even while heavy figures keep the store busy: a ping
# that takes longer goes on in the background (one at a time) and the answer is the last finished
# ping's, since a busy store is not a down one.
PING_WAIT_S = 0.2
PING_TIMEOUT_S = 5.0


async def _ping(state: State) -> bool:
    try:
        if not state.store_open:
            await state.store.open()
            state.store_open = True
        ok = bool(await asyncio.wait_for(state.store.ping(), PING_TIMEOUT_S))
    except Exception as e:  # any failure of the store means "unavailable" here, never a 500
        log.debug("store ping failed: %r", e)
        ok = False
    state.store_ok = ok
    return ok


@router.get("/healthz", response_model=Health)
async def healthz(request: Request) -> Health:
    """Always 200 while the process serves; ``store`` says whether the store answers (a ping still
    running after 0.2 s: the last finished ping's answer). Needs no token (for probes and
    load balancers) and says nothing else."""
    state = request.app.state
    task: asyncio.Task[bool] | None = getattr(state, "ping_task", None)
    if task is None or task.done():
        task = asyncio.create_task(_ping(state), name="store-ping")
        state.ping_task = task
    try:
        ok = await asyncio.wait_for(asyncio.shield(task), PING_WAIT_S)
    except TimeoutError:
        ok = bool(getattr(state, "store_ok", False))
    return Health(store="ok" if ok else "unavailable")
