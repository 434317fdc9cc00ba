"""Alerts: episodes from a real SQLite store with an injected clock, the sender's backoff and rate
limit against a real HTTP receiver on 127.0.0.1, two real ``mieruka api`` processes on one store
sending each message once, and ``mieruka alerts test``."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from api.alerts import AlertEvaluator, AlertMessage, WebhookSender, claim_key
from core.model import Fact, to_ns
from core.plant import CredentialError, Plant, PlantFileError, Webhook, parse_plant
from core.store.sqlite import SqliteStore
from mieruka.cli import main
from tests.support.procs import api_process
from tests.support.webhook import Receiver, receiver

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)  # a Friday
SECRET = "/hooks/T000/B000/secret-part"


def plant_raw(url: str | None = "http://127.0.0.1:9/x", rules: list[dict[str, Any]] | None = None, *,
              shifts: list[dict[str, Any]] | None = None, check_period_s: float = 1.0,
              webhook: dict[str, Any] | None = None) -> dict[str, Any]:
    def machine(mid: str, output: bool = False) -> dict[str, Any]:
        base = f"t/l1/{mid}"
        return {"id": mid, "name": {"ja": f"機械{mid}", "en": f"Press {mid}"}, "source": "broker", "output": output,
                "ideal_cycle_s": 1.0,
                "signals": {"good": {"topic": f"{base}/c", "field": "good", "counter_bits": 32},
                            "state": {"topic": f"{base}/s", "field": "code", "map": {1: "running", 2: "idle",
                                                                                     3: "down", 5: "planned"}}}}

    return {
        "site": {"id": "t", "name": "Test works", "timezone": "UTC", "locale": "en"},
        "calendar": {"shifts": shifts or []},
        "sources": {"broker": {"mqtt": {"host": "127.0.0.1", "port": 1883}}},
        "lines": [{"id": "l1", "name": {"ja": "ライン1", "en": "Line One"}, "target_per_hour": 60,
                   "machines": [machine("m1"), machine("m2", output=True)]}],
        "alerts": {"check_period_s": check_period_s,
                   "webhooks": [webhook or {"id": "chat", "url": url}],
                   "rules": rules if rules is not None else []},
    }


def state(t: datetime, machine: str, value: str) -> Fact:
    return Fact("state", to_ns(t), "l1", machine, "state", value)


def good(t: datetime, machine: str, n: int) -> Fact:
    return Fact("count", to_ns(t), "l1", machine, "good", n)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def evaluator(plant: Plant, store: SqliteStore, owner: str) -> tuple[AlertEvaluator, list[AlertMessage]]:
    got: list[AlertMessage] = []
    return AlertEvaluator(plant, store, got.append, owner=owner), got


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ---- episodes, injected clock ----------------------------------------------------------------------


async def test_a_stop_fires_once_after_its_minutes_and_resolves_once(store: SqliteStore) -> None:
    plant = parse_plant(plant_raw(rules=[{"id": "line-down", "down": {"line": "l1", "minutes": 2}},
                                         {"id": "press-down", "down": {"machine": "m2", "minutes": 1}}]))
    await store.write([state(at(0), "m1", "running"), state(at(0), "m2", "running"),
                       state(at(60), "m2", "idle"), state(at(90), "m2", "down")])  # one stop from 60 s on
    ev, sent = evaluator(plant, store, "replica-a")
    assert await ev.step(at(149)) == []  # the line stopped 89 s, m2 down 59 s: under both rules' minutes
    fired = await ev.step(at(181))
    assert [(m.rule, m.kind) for m in fired] == [("line-down", "firing"), ("press-down", "firing")]
    # the line's stop began at its first non-running state, though its state changed inside it; the
    # machine rule counts `down` only
    assert [m.payload["since"] for m in fired] == [at(60).isoformat(), at(90).isoformat()]
    assert fired[0].payload["subject"] == {"line": "l1", "line_name": "Line One"}
    assert fired[1].payload["subject"] == {"machine": "m2", "machine_name": "Press m2", "line": "l1",
                                           "line_name": "Line One"}
    assert "Line One" in fired[0].payload["text"] and "down" in fired[0].payload["text"]
    assert fired[0].webhooks == ("chat",)
    assert await ev.step(at(182)) == [] and len(sent) == 2
    assert await ev.step(at(300)) == []  # still down: no second message
    # a restarted API (a new owner) sees the same episodes and sends nothing again
    restarted, resent = evaluator(plant, store, "replica-b")
    assert await restarted.step(at(310)) == []
    await store.write([state(at(400), "m2", "running")])
    done = await ev.step(at(410))
    assert sorted((m.rule, m.kind) for m in done) == [("line-down", "resolved"), ("press-down", "resolved")]
    line_done = next(m for m in done if m.rule == "line-down")
    assert line_done.payload["duration_s"] == pytest.approx(350)
    assert await restarted.step(at(411)) == []  # the other replica lost the resolved claims
    assert resent == []
    assert await ev.step(at(420)) == []


async def test_a_new_stop_is_a_new_episode(store: SqliteStore) -> None:
    plant = parse_plant(plant_raw(rules=[{"id": "down", "down": {"machine": "m2", "minutes": 0.5}}]))
    await store.write([state(at(0), "m2", "running"), state(at(10), "m2", "down")])
    ev, sent = evaluator(plant, store, "a")
    await ev.step(at(50))
    await store.write([state(at(60), "m2", "running"), state(at(62), "m2", "down")])  # a run between two checks
    await ev.step(at(100))
    assert [(m.kind, m.payload["since"]) for m in sent] == [
        ("firing", at(10).isoformat()), ("resolved", at(10).isoformat()), ("firing", at(62).isoformat())]


async def test_down_counts_production_time_only(store: SqliteStore) -> None:
    # a stop from 16:50 with the shift ending at 17:00: 10 minutes by 08:00 next day, 20 at 08:10
    shifts = [{"id": "day", "start": "08:00", "end": "17:00", "days": ["mon", "tue", "wed", "thu", "fri", "sat"]}]
    plant = parse_plant(plant_raw(rules=[{"id": "down", "down": {"line": "l1", "minutes": 15}}], shifts=shifts))
    stop = T0.replace(hour=16, minute=50)
    await store.write([state(T0, "m2", "running"), state(stop, "m2", "down")])
    ev, sent = evaluator(plant, store, "a")
    await ev.step(stop + timedelta(hours=12))  # 04:50 next day: ten minutes of production time
    assert sent == []
    await ev.step(T0 + timedelta(days=1, minutes=6))  # 08:06 Saturday: 16 minutes
    assert [(m.kind, m.payload["since"]) for m in sent] == [("firing", stop.isoformat())]


async def test_no_data_fires_on_silence_and_resolves_on_data(store: SqliteStore) -> None:
    plant = parse_plant(plant_raw(rules=[{"id": "quiet", "no_data": {"machine": "m1", "seconds": 30}}]))
    await store.write([state(at(0), "m1", "running"), good(at(10), "m1", 1)])
    ev, sent = evaluator(plant, store, "a")
    assert await ev.step(at(39)) == []
    fired = await ev.step(at(41))
    assert [(m.kind, m.payload["since"]) for m in fired] == [("firing", at(10).isoformat())]
    assert fired[0].payload["subject"]["machine_name"] == "Press m1"
    await store.write([good(at(50), "m1", 1)])
    assert [(m.kind, m.payload["duration_s"]) for m in await ev.step(at(51))] == [("resolved", 41.0)]
    assert len(sent) == 2


async def test_behind_plan_at_its_check_times(store: SqliteStore) -> None:
    shifts = [{"id": "day", "start": "08:00", "end": "17:00", "days": ["mon", "tue", "wed", "thu", "fri"]}]
    plant = parse_plant(plant_raw(rules=[{"id": "plan", "behind_plan": {"line": "l1", "percent": 10,
                                                                         "at": ["10:00", "12:00"]}}], shifts=shifts))
    ten = T0.replace(hour=10)
    # 100 good by 10:00, where the plan (60/h, no breaks) is 120: 16.7 % behind
    await store.write([state(T0, "m2", "running"), good(T0 + timedelta(minutes=30), "m2", 100),
                       good(T0 + timedelta(minutes=30), "m1", 500)])  # upstream counts are no line output
    ev, sent = evaluator(plant, store, "a")
    assert await ev.step(ten - timedelta(seconds=30)) == []  # before the first check time
    fired = await ev.step(ten + timedelta(seconds=30))
    assert [(m.kind, m.payload["since"]) for m in fired] == [("firing", ten.isoformat())]
    detail = fired[0].payload["detail"]
    expected = 60 * (2 + 30 / 3600)  # the plan so far at 10:00:30, computed here from target × time
    assert detail["good"] == 100 and detail["expected"] == pytest.approx(expected)
    assert detail["behind_percent"] == pytest.approx((expected - 100) / expected * 100)
    assert "Line One" in fired[0].payload["text"] and "behind plan" in fired[0].payload["text"]
    # a restart at 11:00 finds the same episode (it began at the 10:00 check)
    restarted, resent = evaluator(plant, store, "b")
    assert await restarted.step(T0.replace(hour=11)) == []
    # caught up by 11:30 (200 of 210): no longer more than 10 % behind
    await store.write([good(T0.replace(hour=11, minute=20), "m2", 100)])
    assert [m.kind for m in await ev.step(T0.replace(hour=11, minute=30))] == ["resolved"]
    assert resent == [] and len(sent) == 2


async def test_claim_keys_name_rule_subject_start_and_kind() -> None:
    from api.alerts import Subject

    assert claim_key("line-down", Subject("line", "l1"), T0, "firing") == f"alert/line-down/line:l1/{to_ns(T0)}/firing"


# ---- sending: backoff and rate limit ------------------------------------------------------------


class Counted:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def _inc(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def sent(self, webhook: str, kind: str) -> None:
        self._inc(f"sent/{webhook}/{kind}")

    def failed(self, webhook: str, kind: str) -> None:
        self._inc(f"failed/{webhook}/{kind}")

    def retried(self, webhook: str) -> None:
        self._inc(f"retried/{webhook}")

    def delayed(self, webhook: str) -> None:
        self._inc(f"delayed/{webhook}")


def message(n: int) -> AlertMessage:
    return AlertMessage("r", "firing", ("chat",), {"text": f"message {n}", "rule": "r", "kind": "firing", "n": n})


async def send_all(r: Receiver, hook: Webhook, messages: list[AlertMessage], wait_for: int, **kw: Any
                   ) -> Counted:
    metrics = Counted()
    async with httpx.AsyncClient() as client:
        sender = WebhookSender(hook, r.url(SECRET), client, metrics=metrics, **kw)
        sender.start()
        try:
            for m in messages:
                sender.submit(m)
            await asyncio.wait_for(sender.drained(), 20.0)
            assert len(r.records) == wait_for
        finally:
            await sender.stop()
    return metrics


async def test_a_failing_webhook_gets_the_message_once_after_backoff() -> None:
    with receiver(fail_first=2) as r:
        hook = Webhook(id="chat", url=r.url(SECRET))
        metrics = await send_all(r, hook, [message(1)], 1, tries=5, backoff_s=0.2)
        assert [rec.body["n"] for rec in r.records] == [1]
        assert len(r.attempts) == 3
        gaps = [b - a for a, b in zip(r.attempts, r.attempts[1:], strict=False)]
        assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # exponential: 0.2 s, then 0.4 s
        assert metrics.counts == {"retried/chat": 2, "sent/chat/firing": 1}


async def test_a_refused_message_is_not_retried_and_is_counted_failed() -> None:
    with receiver(fail_first=1, fail_status=400) as r:
        hook = Webhook(id="chat", url=r.url(SECRET))
        metrics = await send_all(r, hook, [message(1), message(2)], 1, tries=5, backoff_s=0.05)
        assert [rec.body["n"] for rec in r.records] == [2]
        assert len(r.attempts) == 2
        assert metrics.counts == {"failed/chat/firing": 1, "sent/chat/firing": 1}


async def test_the_rate_limit_delays_the_overflow_and_drops_nothing() -> None:
    with receiver() as r:
        hook = Webhook(id="chat", url=r.url(SECRET), max_per_minute=2)
        window = 1.0  # the minute, shortened
        metrics = await send_all(r, hook, [message(n) for n in range(5)], 5, rate_window_s=window)
        assert [rec.body["n"] for rec in r.records] == [0, 1, 2, 3, 4]
        t = [rec.at for rec in r.records]
        assert t[1] - t[0] < window  # the first two at once
        assert t[2] - t[0] >= window * 0.95 and t[4] - t[2] >= window * 0.95  # then two per window
        # 2 and 4 wait for the window to slide; 3 may go out right after 2 (as 1 left the window)
        assert metrics.counts["delayed/chat"] in (2, 3) and metrics.counts["sent/chat/firing"] == 5


# ---- end to end: two mieruka api processes on one store ----------------------------------------


def write_now(path: Path, facts: list[Fact]) -> None:
    async def run() -> None:
        s = SqliteStore(path)
        await s.open()
        try:
            await s.write(facts)
        finally:
            await s.close()

    asyncio.run(run())


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


@pytest.fixture
def two_apis(tmp_path: Path) -> Iterator[tuple[Receiver, Path, list[str], list[Path]]]:
    with receiver() as r:
        secret = tmp_path / "webhook-url"
        secret.write_text(r.url(SECRET) + "\n")
        raw = plant_raw(rules=[{"id": "line-down", "down": {"line": "l1", "minutes": 0.05}}],
                        webhook={"id": "chat", "url_file": "webhook-url"})
        plant_file = tmp_path / "plant.yaml"
        plant_file.write_text(yaml.safe_dump(raw, allow_unicode=True))
        db = tmp_path / "store.db"
        start = datetime.now(UTC) - timedelta(seconds=30)
        write_now(db, [state(start, "m1", "running"), state(start, "m2", "running")])
        logs = [tmp_path / "api-a.log", tmp_path / "api-b.log"]
        with api_process(plant_file, f"sqlite:///{db}", logs[0]) as a, \
                api_process(plant_file, f"sqlite:///{db}", logs[1]) as b:
            yield r, db, [a, b], logs


def test_two_api_replicas_send_down_and_resolved_once(two_apis: tuple[Receiver, Path, list[str], list[Path]]
                                                      ) -> None:
    r, db, apis, logs = two_apis
    down_at = datetime.now(UTC)
    write_now(db, [state(down_at, "m2", "down")])
    written = time.monotonic()
    recs = r.wait_for(lambda recs: any(x.body["kind"] == "firing" for x in recs), 3 + 1 + 5)
    # within the rule's 3 s and one check period of 1 s (and a margin for two loaded processes)
    assert recs[0].at - written <= 3 + 1 + 2.5
    assert recs[0].at - written >= 3 - 0.5
    body = recs[0].body
    assert (body["rule"], body["kind"], body["since"]) == ("line-down", "firing", down_at.isoformat())
    assert body["subject"]["line_name"] == "Line One" and body["site"] == "t"
    assert recs[0].path == SECRET
    write_now(db, [state(datetime.now(UTC), "m2", "running")])
    r.wait_for(lambda recs: any(x.body["kind"] == "resolved" for x in recs), 1 + 5)

    def checks(base: str) -> float:
        return metric(httpx.get(f"{base}/metrics").text, "mieruka_alerts_checks_total", result="ok")

    # both replicas have checked twice more since: a duplicate would have been sent by now
    before = [checks(b) for b in apis]
    deadline = time.monotonic() + 10
    while not all(checks(b) >= n + 2 for b, n in zip(apis, before, strict=True)):
        assert time.monotonic() < deadline, "the replicas stopped checking"
        time.sleep(0.2)
    assert r.kinds() == [("line-down", "firing"), ("line-down", "resolved")]
    texts = [httpx.get(f"{b}/metrics").text for b in apis]
    for kind in ("firing", "resolved"):
        assert sum(metric(t, "mieruka_alerts_sent_total", webhook="chat", kind=kind) for t in texts) == 1
    for log in logs:  # the webhook URL is a secret: logs name the webhook's id only
        assert "secret-part" not in log.read_text()


# ---- mieruka alerts test -----------------------------------------------------------------------------


def test_alerts_test_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    plant_file = tmp_path / "plant.yaml"
    with receiver() as ok, receiver(fail_first=100) as failing:
        raw = plant_raw(ok.url(SECRET))
        raw["alerts"]["webhooks"].append({"id": "broken", "url": failing.url(SECRET), "headers": {"X-Team": "line"}})
        plant_file.write_text(yaml.safe_dump(raw, allow_unicode=True))
        assert main(["alerts", "test", "--plant", str(plant_file), "--webhook", "chat"]) == 0
        assert ok.kinds() == [(None, "test")]
        assert "Test works" in ok.records[0].body["text"]
        assert main(["alerts", "test", "--plant", str(plant_file)]) == 1
        out = capsys.readouterr().out
        assert "webhook chat: ok" in out and "webhook broken: FAILED (answered 500" in out
        assert "secret-part" not in out
        assert failing.attempts and failing.records == []
        assert main(["alerts", "test", "--plant", str(plant_file), "--webhook", "nope"]) == 2
    raw["alerts"]["webhooks"] = [{"id": "chat", "url_env": "MIERUKA_TEST_UNSET_HOOK"}]
    monkeypatch.delenv("MIERUKA_TEST_UNSET_HOOK", raising=False)
    plant_file.write_text(yaml.safe_dump(raw))
    assert main(["alerts", "test", "--plant", str(plant_file)]) == 2
    assert "MIERUKA_TEST_UNSET_HOOK" in capsys.readouterr().err
    raw["alerts"]["rules"] = [{"id": "x", "down": {"line": "nope", "minutes": 1}}]
    plant_file.write_text(yaml.safe_dump(raw))
    assert main(["alerts", "test", "--plant", str(plant_file)]) == 2
    err = capsys.readouterr().err
    assert str(plant_file) in err and "alerts.rules[0].down.line" in err and "unknown line 'nope'" in err


# ---- the plant file's alerts ---------------------------------------------------------------------


@pytest.mark.parametrize(("alerts", "path", "words"), [
    ({"webhooks": [{"id": "a", "url": "http://x/1", "url_env": "X"}]}, "alerts.webhooks[0]", "exactly one of url"),
    ({"webhooks": [{"id": "a", "url": "ftp://x/1"}]}, "alerts.webhooks[0]", "http:// or https://"),
    ({"webhooks": [{"id": "a", "url": "http://x"}],
      "rules": [{"id": "r", "down": {"line": "l1", "minutes": 1}, "no_data": {"machine": "m1", "seconds": 5}}]},
     "alerts.rules[0]", "exactly one condition"),
    ({"webhooks": [{"id": "a", "url": "http://x"}], "rules": [{"id": "r", "down": {"minutes": 1}}]},
     "alerts.rules[0].down", "either 'line"),
    ({"webhooks": [{"id": "a", "url": "http://x"}],
      "rules": [{"id": "r", "webhooks": ["b"], "no_data": {"machine": "m9", "seconds": 5}}]},
     "alerts.rules[0].webhooks[0]", "unknown webhook 'b'"),
    ({"webhooks": [{"id": "a", "url": "http://x"}],
      "rules": [{"id": "r", "no_data": {"machine": "m9", "seconds": 5}}]},
     "alerts.rules[0].no_data.machine", "unknown machine 'm9'"),
    ({"webhooks": [{"id": "a", "url": "http://x"}],
      "rules": [{"id": "r", "behind_plan": {"line": "l1", "percent": 10, "at": ["9:00"]}}]},
     "alerts.rules[0].behind_plan.at", "HH:MM"),
    ({"rules": [{"id": "r", "no_data": {"machine": "m1", "seconds": 5}}]}, "alerts.rules", "no webhook"),
    ({"chek_period_s": 5}, "alerts.chek_period_s", "check_period_s"),
])
def test_plant_file_alert_errors_name_path_and_fix(alerts: dict[str, Any], path: str, words: str) -> None:
    raw = plant_raw()
    raw["alerts"] = alerts
    with pytest.raises(PlantFileError) as e:
        parse_plant(raw, "plant.yaml")
    assert f"plant.yaml: {path}:" in str(e.value) and words in str(e.value), str(e.value)


def test_a_webhook_url_from_a_file_or_the_environment_never_shows_in_errors(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    hook = Webhook(id="chat", url_env="MIERUKA_TEST_HOOK")
    monkeypatch.setenv("MIERUKA_TEST_HOOK", "https://hooks.example/T1/secret-part")
    assert hook.resolve_url() == "https://hooks.example/T1/secret-part"
    monkeypatch.setenv("MIERUKA_TEST_HOOK", "hooks.example/T1/secret-part")
    with pytest.raises(CredentialError) as e:
        hook.resolve_url()
    assert "webhook chat" in str(e.value) and "secret-part" not in str(e.value)
    (tmp_path / "url").write_text("")
    file_hook = Webhook(id="chat", url_file=str(tmp_path / "url"))
    with pytest.raises(CredentialError, match=r"url_file: .* is empty"):
        file_hook.resolve_url()


def test_api_start_needs_every_webhook_url_and_no_alerts_switches_the_checks_off(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from api.app import create_app
    from api.auth import Auth

    raw = plant_raw(rules=[{"id": "quiet", "no_data": {"machine": "m1", "seconds": 30}}],
                    webhook={"id": "chat", "url_env": "MIERUKA_TEST_UNSET_HOOK"})
    monkeypatch.delenv("MIERUKA_TEST_UNSET_HOOK", raising=False)
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(yaml.safe_dump(raw))
    db = tmp_path / "store.db"
    write_now(db, [state(T0, "m1", "running")])
    # the URL is read before the API starts: exit 2 naming the webhook and the variable
    assert main(["api", "--plant", str(plant_file), "--store", f"sqlite:///{db}", "--anonymous-read"]) == 2
    err = capsys.readouterr().err
    assert "webhook chat" in err and "MIERUKA_TEST_UNSET_HOOK" in err
    plant = parse_plant(raw)
    assert create_app(plant, SqliteStore(db), auth=Auth.open_reads(), alerts=False).state.alerts is None
    monkeypatch.setenv("MIERUKA_TEST_UNSET_HOOK", "http://127.0.0.1:9/hook")
    assert create_app(plant, SqliteStore(db), auth=Auth.open_reads()).state.alerts is not None
