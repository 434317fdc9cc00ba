"""Alerts: the plant file's ``alerts.rules`` checked every ``check_period_s``, messages to webhooks.

Each rule has a condition per subject (a line or a machine) that is true or false at a check. A
stretch of checks where it is true is an **episode**, identified by ``(rule, subject, start)``,
the start being a time the store holds (a stop's first non-running state, a check time, a
machine's newest fact), so every replica and every restart of the API finds the same episode.
An episode sends one ``firing`` message when it is first seen and one ``resolved`` message when
its condition is false again (or its start changed: a new episode).

**Once across replicas.** Before sending, a replica claims
``alert/<rule>/<subject>/<start ns>/<firing|resolved>`` in the store
(:meth:`core.store.base.Store.claim`); only the claim's winner sends. A restarted API loses the
claims of episodes it had already sent, so it sends them no second time. The claim is made
before the message is delivered: a replica that dies between claim and delivery has claimed a
message nobody sends (at most once, never twice).

**Sending** (:class:`WebhookSender`): one queue and one task per webhook, so a slow or failing
webhook never holds up the checks or another webhook. A message is POSTed as JSON; a timeout,
a connection error, 408, 429 or 5xx is retried with exponential backoff (``tries`` in all), any
other answer outside 2xx is final. At most ``max_per_minute`` messages per webhook and minute
are sent; more wait their turn (delayed, never dropped) and the delay is logged once per backlog.
Logs and errors name the webhook's id, never its URL (the URL is the secret).

The conditions are computed through :class:`core.readside.Figures` (``status``: states, last
data, the shift's good and expected; ``in_states_since``: a stop's start); the rules and what they
mean are in README.md, "Alerts".
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import httpx

from core.model import to_ns
from core.plant import (
    AlertRule,
    BehindPlanCondition,
    DownCondition,
    Line,
    NoDataCondition,
    Plant,
    Webhook,
    label,
)
from core.readside import Figures, LineNow, production_ns
from core.store.base import Store

log = logging.getLogger(__name__)

Kind = Literal["firing", "resolved", "test"]
Clock = Callable[[], datetime]
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_TRIES = 5
DEFAULT_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
RATE_WINDOW_S = 60.0
NS = 1_000_000_000


def utc_now() -> datetime:
    return datetime.now(UTC)


def replica_id() -> str:
    """Who claims messages: this process (host, pid and a random part, as a restart is a new owner)."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:60] or "host"
    return f"{host}.{os.getpid()}.{uuid.uuid4().hex[:12]}"


# ---- observations and episodes -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subject:
    kind: Literal["line", "machine"]
    id: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True, slots=True)
class Observation:
    """A rule's condition for one subject at one check: ``start`` is None when it is false."""

    rule: AlertRule
    subject: Subject
    start: datetime | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Episode:
    rule: AlertRule
    subject: Subject
    start: datetime
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """One message for the rule's webhooks; ``payload`` is what is POSTed."""

    rule: str
    kind: Kind
    webhooks: tuple[str, ...]
    payload: dict[str, Any]


Observe = Callable[[], Coroutine[Any, Any, list[Observation]]]


def claim_key(rule: str, subject: Subject, start: datetime, kind: Kind) -> str:
    return f"alert/{rule}/{subject.key}/{to_ns(start)}/{kind}"


# ---- the text of a message ---------------------------------------------------------------------------


def duration_text(seconds: float, lang: str) -> str:
    """``25 min`` / ``1 h 5 min`` / ``40 s`` (``25分``, ``1時間5分``, ``40秒`` in Japanese)."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}秒" if lang == "ja" else f"{s} s"
    m = s // 60
    h, m = divmod(m, 60)
    if lang == "ja":
        return f"{h}時間{m}分" if h else f"{m}分"
    return f"{h} h {m} min" if h else f"{m} min"


def _clock_text(t: datetime, now: datetime, plant: Plant) -> str:
    local, today = t.astimezone(plant.site.tz), now.astimezone(plant.site.tz)
    return local.strftime("%H:%M") if local.date() == today.date() else local.strftime("%m-%d %H:%M")


class Texts:
    """Slack-compatible one-line messages in the site's locale, with line and machine names."""

    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        self.lang = plant.site.locale

    def line_name(self, line_id: str) -> str:
        line = self.plant.line(line_id)
        return label(line.name if line else None, self.lang, line_id)

    def machine_name(self, machine_id: str) -> str:
        m = self.plant.machine(machine_id)
        return label(m.name if m else None, self.lang, machine_id)

    def subject(self, s: Subject) -> str:
        ja = self.lang == "ja"
        if s.kind == "line":
            return f"ライン {self.line_name(s.id)}" if ja else f"Line {self.line_name(s.id)}"
        line = self.plant.line_of(s.id)
        where = f" ({self.line_name(line.id)})" if line is not None else ""
        return f"設備 {self.machine_name(s.id)}{where}" if ja else f"Machine {self.machine_name(s.id)}{where}"

    def firing(self, e: Episode, now: datetime) -> str:
        ja, who = self.lang == "ja", self.subject(e.subject)
        since = _clock_text(e.start, now, self.plant)
        lasted = duration_text((now - e.start).total_seconds(), self.lang)
        if isinstance(e.rule.condition, DownCondition):
            state = str(e.detail.get("state", "down"))
            return (f":red_circle: {who} が {lasted} 停止しています（{since} から、状態 {state}）" if ja else
                    f":red_circle: {who} has been down for {lasted} (since {since}, state {state})")
        if isinstance(e.rule.condition, BehindPlanCondition):
            pct, good, expected = e.detail["behind_percent"], e.detail["good"], e.detail["expected"]
            return (f":large_orange_circle: {who} が計画より {pct:.0f}% 遅れています（{since} 時点、実績 {good} / 計画 "
                    f"{expected:.0f}）" if ja else
                    f":large_orange_circle: {who} is {pct:.0f}% behind plan ({good} good of {expected:.0f} planned, "
                    f"checked at {since})")
        return (f":white_circle: {who} から {lasted} データがありません（最後 {since}）" if ja else
                f":white_circle: No data from {who} for {lasted} (last at {since})")

    def resolved(self, e: Episode, now: datetime) -> str:
        ja, who = self.lang == "ja", self.subject(e.subject)
        lasted = duration_text((now - e.start).total_seconds(), self.lang)
        if isinstance(e.rule.condition, DownCondition):
            return (f":white_check_mark: {who} が復旧しました（停止 {lasted}）" if ja else
                    f":white_check_mark: {who} is running again after {lasted} down")
        if isinstance(e.rule.condition, BehindPlanCondition):
            return (f":white_check_mark: {who} の計画遅れが解消しました（{lasted}）" if ja else
                    f":white_check_mark: {who} is no longer behind plan (was for {lasted})")
        return (f":white_check_mark: {who} からデータが戻りました（{lasted} 途絶）" if ja else
                f":white_check_mark: Data from {who} again (missing for {lasted})")

    def test(self) -> str:
        site = label(self.plant.site.name, self.lang, self.plant.site.id)
        if self.lang == "ja":
            return f"mieruka のテストメッセージです（{site}）。このチャンネルにアラートが届きます。"
        return (f"Test message from mieruka ({site}): alerts will arrive here.")


def subject_payload(plant: Plant, texts: Texts, s: Subject) -> dict[str, Any]:
    if s.kind == "line":
        return {"line": s.id, "line_name": texts.line_name(s.id)}
    line = plant.line_of(s.id)
    out: dict[str, Any] = {"machine": s.id, "machine_name": texts.machine_name(s.id)}
    if line is not None:
        out.update(line=line.id, line_name=texts.line_name(line.id))
    return out


def test_payload(plant: Plant, now: datetime) -> dict[str, Any]:
    texts = Texts(plant)
    return {"text": texts.test(), "rule": None, "kind": "test", "condition": None, "subject": {},
            "since": None, "at": now.isoformat(), "site": plant.site.id,
            "site_name": label(plant.site.name, plant.site.locale, plant.site.id)}


# ---- the evaluator ---------------------------------------------------------------------------------


class AlertEvaluator:
    """Observes every rule at a check (:meth:`observe`, reads only) and turns observations into
    messages (:meth:`apply`: episode bookkeeping and claims). ``send`` gets each message this
    replica won; ``now`` is the clock (injected in tests)."""

    def __init__(self, plant: Plant, store: Store, send: Callable[[AlertMessage], None], *,
                 owner: str | None = None, now: Clock = utc_now) -> None:
        self.plant = plant
        self.store = store
        self.send = send
        self.owner = owner or replica_id()
        self.now = now
        self.texts = Texts(plant)
        self.open: dict[tuple[str, str], Episode] = {}
        self._behind_cache: dict[tuple[str, datetime], bool] = {}

    # -- reads
    async def observe(self, now: datetime, store: Store | None = None) -> list[Observation]:
        """Every rule's condition at ``now`` (``store``: the one to read through, e.g. from a worker)."""
        fig = Figures(self.plant, store or self.store)
        statuses: dict[str, LineNow] = {}

        async def status(line: Line) -> LineNow:
            if line.id not in statuses:
                statuses[line.id] = await fig.status(line, now)
            return statuses[line.id]

        out: list[Observation] = []
        for rule in self.plant.alerts.rules:
            c = rule.condition
            if isinstance(c, DownCondition):
                out.append(await self._down(fig, rule, c, now, status))
            elif isinstance(c, BehindPlanCondition):
                out.append(await self._behind(fig, rule, c, now, status))
            else:
                out.append(await self._no_data(rule, c, now, status))
        return out

    def _production_s(self, since: datetime, now: datetime) -> float:
        """Seconds of production time (shifts minus breaks) in ``[since, now)``; all of it for a plant
        without shifts."""
        if since >= now:
            return 0.0
        if not self.plant.calendar.shifts:
            return (now - since).total_seconds()
        return sum(b - a for a, b in production_ns(self.plant, since, now)) / NS

    async def _down(self, fig: Figures, rule: AlertRule, c: DownCondition, now: datetime,
                    status: Callable[[Line], Awaitable[LineNow]]) -> Observation:
        states = c.down_states()
        if c.line is not None:
            line = self.plant.line(c.line)
            assert line is not None  # the plant file is checked
            subject, machines = Subject("line", line.id), line.output_machines
        else:
            line = self.plant.line_of(c.machine or "")
            machine = self.plant.machine(c.machine or "")
            assert line is not None and machine is not None
            subject, machines = Subject("machine", machine.id), [machine]
        now_states = {m.machine: m for m in (await status(line)).machines}
        if not all(now_states[m.id].state in states for m in machines):
            return Observation(rule, subject, None)
        starts: list[datetime] = []
        for m in machines:
            since = await fig.in_states_since(m, now, states)
            if since is None:
                return Observation(rule, subject, None)
            starts.append(since)
        start = max(starts)  # a line is down once all its output machines are
        down_s = self._production_s(start, now)
        detail = {"state": now_states[machines[0].id].state, "down_s": down_s}
        return Observation(rule, subject, start if down_s >= c.minutes * 60 else None, detail)

    def _check_instants(self, c: BehindPlanCondition, lo: datetime, hi: datetime) -> list[datetime]:
        tz = self.plant.site.tz
        first = lo.astimezone(tz).date()
        out = []
        for d in range((hi.astimezone(tz).date() - first).days + 1):
            for t in c.times():
                at = datetime.combine(first + timedelta(days=d), t, tzinfo=tz).astimezone(UTC)
                if lo <= at <= hi:
                    out.append(at)
        return sorted(out)

    @staticmethod
    def _is_behind(now_status: LineNow, percent: float) -> tuple[bool, dict[str, Any]]:
        p = now_status.progress
        if p is None or p.expected <= 0:
            return False, {}
        behind_pct = (p.expected - p.good) / p.expected * 100
        return behind_pct > percent, {"good": p.good, "expected": p.expected, "behind_percent": behind_pct}

    async def _behind(self, fig: Figures, rule: AlertRule, c: BehindPlanCondition, now: datetime,
                      status: Callable[[Line], Awaitable[LineNow]]) -> Observation:
        line = self.plant.line(c.line)
        assert line is not None
        subject = Subject("line", line.id)
        now_status = await status(line)
        behind, detail = self._is_behind(now_status, c.percent)
        if not behind or now_status.shift is None:
            return Observation(rule, subject, None, detail)
        # the episode starts at the earliest check time of this shift from which on the line was
        # behind at every check time and is now: the same answer for every replica and restart
        start: datetime | None = None
        for at in reversed(self._check_instants(c, now_status.shift.start, min(now, now_status.shift.end))):
            key = (f"{rule.id}/{line.id}", at)
            if key not in self._behind_cache:
                self._behind_cache[key] = self._is_behind(await fig.status(line, at), c.percent)[0]
            if not self._behind_cache[key]:
                break
            start = at
        if len(self._behind_cache) > 1000:
            self._behind_cache.clear()
        return Observation(rule, subject, start, detail)

    async def _no_data(self, rule: AlertRule, c: NoDataCondition, now: datetime,
                       status: Callable[[Line], Awaitable[LineNow]]) -> Observation:
        line = self.plant.line_of(c.machine)
        assert line is not None
        subject = Subject("machine", c.machine)
        m = next(x for x in (await status(line)).machines if x.machine == c.machine)
        if m.last_data is None:  # never reported: nothing to measure silence from (status shows it offline)
            return Observation(rule, subject, None)
        silent_s = (now - m.last_data).total_seconds()
        return Observation(rule, subject, m.last_data if silent_s > c.seconds else None,
                           {"last_data": m.last_data.isoformat(), "silent_s": silent_s})

    # -- episodes
    async def apply(self, observations: Sequence[Observation], now: datetime) -> list[AlertMessage]:
        """Open, continue and close episodes; claim and send their messages. Returns what this
        replica sent (won the claim of)."""
        sent: list[AlertMessage] = []
        for o in observations:
            key = (o.rule.id, o.subject.key)
            current = self.open.get(key)
            if current is not None and (o.start is None or o.start != current.start):
                del self.open[key]
                sent.extend(await self._emit(current, "resolved", now))
                current = None
            if o.start is not None and current is None:
                episode = Episode(o.rule, o.subject, o.start, dict(o.detail))
                self.open[key] = episode
                sent.extend(await self._emit(episode, "firing", now))
            elif current is not None:
                current.detail = dict(o.detail)
        return sent

    async def _emit(self, e: Episode, kind: Kind, now: datetime) -> list[AlertMessage]:
        if not await self.store.claim(claim_key(e.rule.id, e.subject, e.start, kind), self.owner):
            log.debug("alert %s %s %s: another replica sends it (or sent it before a restart)", e.rule.id,
                      e.subject.key, kind)
            return []
        text = self.texts.firing(e, now) if kind == "firing" else self.texts.resolved(e, now)
        payload: dict[str, Any] = {
            "text": text, "rule": e.rule.id, "kind": kind, "condition": e.rule.kind,
            "subject": subject_payload(self.plant, self.texts, e.subject),
            "since": e.start.isoformat(), "at": now.isoformat(), "site": self.plant.site.id,
            "site_name": label(self.plant.site.name, self.plant.site.locale, self.plant.site.id),
            "detail": e.detail,
        }
        if kind == "resolved":
            payload["duration_s"] = round((now - e.start).total_seconds(), 3)
        msg = AlertMessage(e.rule.id, kind, tuple(w.id for w in self.plant.alerts.webhooks_of(e.rule)), payload)
        log.info("alert %s: %s %s since %s", e.rule.id, kind, e.subject.key, e.start.isoformat())
        self.send(msg)
        return [msg]

    async def step(self, now: datetime | None = None) -> list[AlertMessage]:
        """One check: observe, then apply (on this loop)."""
        at = now or self.now()
        return await self.apply(await self.observe(at), at)


# ---- sending ---------------------------------------------------------------------------------------


class SendMetrics(Protocol):
    """What the senders count (the API passes its Prometheus counters, :class:`api.metrics.ApiMetrics`)."""

    def sent(self, webhook: str, kind: str) -> None: ...

    def failed(self, webhook: str, kind: str) -> None: ...

    def retried(self, webhook: str) -> None: ...

    def delayed(self, webhook: str) -> None: ...


def _reason(e: BaseException, url: str, webhook: str) -> str:
    # httpx puts the URL into some messages: the URL is the secret, so it is cut out
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return text.replace(url, f"<webhook {webhook}>")


async def post_once(client: httpx.AsyncClient, hook: Webhook, url: str, payload: dict[str, Any],
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int | None, str]:
    """POST one message: (HTTP status or None, a reason to log that never holds the URL)."""
    try:
        resp = await client.post(url, json=payload, headers=dict(hook.headers), timeout=timeout_s)
    except httpx.HTTPError as e:
        return None, _reason(e, url, hook.id)
    if 200 <= resp.status_code < 300:
        return resp.status_code, "ok"
    body = resp.text[:200].replace(url, f"<webhook {hook.id}>").strip()
    return resp.status_code, f"answered {resp.status_code}" + (f": {body}" if body else "")


def _retryable(status: int | None) -> bool:
    return status is None or status in (408, 429) or status >= 500


class _NoMetrics:
    def sent(self, webhook: str, kind: str) -> None: ...

    def failed(self, webhook: str, kind: str) -> None: ...

    def retried(self, webhook: str) -> None: ...

    def delayed(self, webhook: str) -> None: ...


class WebhookSender:
    """One webhook's queue and the task that empties it: rate limit, POST, retries with backoff."""

    def __init__(self, hook: Webhook, url: str, client: httpx.AsyncClient, *, metrics: SendMetrics | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, tries: int = DEFAULT_TRIES,
                 backoff_s: float = DEFAULT_BACKOFF_S, rate_window_s: float = RATE_WINDOW_S) -> None:
        self.hook, self._url, self.client = hook, url, client
        self.metrics: SendMetrics = metrics or _NoMetrics()
        self.timeout_s, self.tries, self.backoff_s = timeout_s, max(1, tries), backoff_s
        self.rate_window_s = rate_window_s
        self.queue: asyncio.Queue[AlertMessage] = asyncio.Queue()
        self._sent_at: deque[float] = deque()
        self._task: asyncio.Task[None] | None = None

    def submit(self, msg: AlertMessage) -> None:
        self.queue.put_nowait(msg)

    async def drained(self) -> None:
        """Return once every message submitted so far has been delivered or given up on."""
        await self.queue.join()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"alerts-webhook-{self.hook.id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if not self.queue.empty():
            log.warning("webhook %s: %d alert message(s) not sent before shutdown", self.hook.id, self.queue.qsize())

    async def _run(self) -> None:
        delayed = 0
        while True:
            msg = await self.queue.get()
            wait = self._rate_wait()
            if wait > 0:
                if delayed == 0:
                    log.warning("webhook %s: more than %d messages per minute; delaying %d queued message(s) "
                                "(none is dropped)", self.hook.id, self.hook.max_per_minute, self.queue.qsize() + 1)
                delayed += 1
                self.metrics.delayed(self.hook.id)
                await asyncio.sleep(wait)
            try:
                await self._deliver(msg)
            except Exception:  # a bug must not end this webhook's queue
                log.exception("webhook %s: alert %s %s could not be sent", self.hook.id, msg.rule, msg.kind)
                self.metrics.failed(self.hook.id, msg.kind)
            finally:
                self.queue.task_done()
            if delayed and self.queue.empty():
                log.warning("webhook %s: rate limit backlog sent (%d message(s) were delayed)", self.hook.id, delayed)
                delayed = 0

    def _rate_wait(self) -> float:
        now = time.monotonic()
        while self._sent_at and now - self._sent_at[0] >= self.rate_window_s:
            self._sent_at.popleft()
        if len(self._sent_at) < self.hook.max_per_minute:
            return 0.0
        return self._sent_at[0] + self.rate_window_s - now

    async def _deliver(self, msg: AlertMessage) -> bool:
        reason = ""
        for attempt in range(self.tries):
            if attempt:
                self.metrics.retried(self.hook.id)
                await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            status, reason = await post_once(self.client, self.hook, self._url, msg.payload, self.timeout_s)
            if status is not None and 200 <= status < 300:
                self._sent_at.append(time.monotonic())
                self.metrics.sent(self.hook.id, msg.kind)
                return True
            if not _retryable(status):
                break
            log.info("webhook %s: %s %s not delivered (%s); try %d of %d", self.hook.id, msg.rule, msg.kind,
                     reason, attempt + 1, self.tries)
        self._sent_at.append(time.monotonic())
        self.metrics.failed(self.hook.id, msg.kind)
        log.error("webhook %s: gave up on alert %s %s: %s", self.hook.id, msg.rule, msg.kind, reason)
        return False


@dataclass(frozen=True, slots=True)
class AlertOptions:
    """Knobs of the sending side (not in the plant file: they are for tests and tuning)."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    tries: int = DEFAULT_TRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    rate_window_s: float = RATE_WINDOW_S
    owner: str | None = None  # who claims messages (default: replica_id())
    now: Clock = utc_now


def resolve_urls(plant: Plant, only: str | None = None) -> dict[str, tuple[Webhook, str]]:
    """Each webhook (or only ``only``) with its URL; ``CredentialError`` names a webhook whose URL
    cannot be had."""
    return {w.id: (w, w.resolve_url()) for w in plant.alerts.webhooks if only is None or w.id == only}


class AlertService:
    """The API's alerts: the check loop and one sender per webhook, for the app's lifespan.

    ``observe_on``: runs a check's reads somewhere else than the server's loop (the API's figure
    workers), given a function of the store to read through."""

    def __init__(self, plant: Plant, store: Store, *, options: AlertOptions = AlertOptions(),
                 metrics: SendMetrics | None = None,
                 observe_on: Callable[[Observe], Awaitable[list[Observation]]] | None = None,
                 on_check: Callable[[str], None] | None = None) -> None:
        self.plant = plant
        self.options = options
        self.urls = resolve_urls(plant)  # CredentialError now, at startup, not at the first alert
        self.metrics = metrics
        self.observe_on = observe_on
        self.on_check = on_check or (lambda result: None)
        self.senders: dict[str, WebhookSender] = {}
        self.evaluator = AlertEvaluator(plant, store, self._dispatch, owner=options.owner, now=options.now)
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None

    def _dispatch(self, msg: AlertMessage) -> None:
        for w in msg.webhooks:
            sender = self.senders.get(w)
            if sender is not None:
                sender.submit(msg)

    async def start(self) -> None:
        self._client = httpx.AsyncClient(follow_redirects=False)
        for wid, (hook, url) in self.urls.items():
            o = self.options
            self.senders[wid] = WebhookSender(hook, url, self._client, metrics=self.metrics, timeout_s=o.timeout_s,
                                              tries=o.tries, backoff_s=o.backoff_s, rate_window_s=o.rate_window_s)
            self.senders[wid].start()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="alerts-check")
        log.info("alerts: %d rule(s) checked every %g s, %d webhook(s)", len(self.plant.alerts.rules),
                 self.plant.alerts.check_period_s, len(self.senders))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for s in self.senders.values():
            await s.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def check(self) -> list[AlertMessage]:
        """One check now: reads (on a worker when ``observe_on`` is given), then episodes and claims."""
        now = self.options.now()
        ev = self.evaluator
        if self.observe_on is not None:
            observations = await self.observe_on(lambda: ev.observe(now))
        else:
            observations = await ev.observe(now)
        return await ev.apply(observations, now)

    async def _loop(self) -> None:
        period = self.plant.alerts.check_period_s
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.check()
                self.on_check("ok")
                if self._last_error is not None:
                    log.info("alerts: checks work again")
                    self._last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a store outage must not end the checks: the next one tries again
                self.on_check("error")
                reason = f"{type(e).__name__}: {e}"
                if reason != self._last_error:
                    log.warning("alerts: a check failed (%s); trying again every %g s", reason, period)
                    self._last_error = reason
            await asyncio.sleep(max(0.0, period - (loop.time() - started)))


async def send_test(plant: Plant, only: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                    now: Clock = utc_now) -> dict[str, tuple[bool, str]]:
    """Send one test message to each webhook (or only ``only``), once, no retries: per webhook
    (answered 2xx, what happened)."""
    urls = resolve_urls(plant, only)
    payload = test_payload(plant, now())
    out: dict[str, tuple[bool, str]] = {}
    async with httpx.AsyncClient(follow_redirects=False) as client:
        for wid, (hook, url) in urls.items():
            status, reason = await post_once(client, hook, url, payload, timeout_s)
            out[wid] = (status is not None and 200 <= status < 300, reason)
    return out


__all__ = [
    "AlertEvaluator",
    "AlertMessage",
    "AlertOptions",
    "AlertService",
    "Observation",
    "Subject",
    "WebhookSender",
    "claim_key",
    "send_test",
]
