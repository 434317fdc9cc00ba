"""Screens refreshing at the same period ask about the same instant, so the API answers them once."""

from __future__ import annotations

from datetime import UTC, datetime

from dashboard.app import period_start

T = datetime(2026, 11, 27, 1, 30, 2, 250000, tzinfo=UTC).timestamp()


def test_every_screen_in_a_period_asks_about_its_start() -> None:
    start = datetime(2026, 11, 27, 1, 30, tzinfo=UTC)
    assert {period_start(5000, T + d) for d in (-2.25, 0.0, 1.5, 2.7)} == {start}
    assert period_start(5000, T + 2.75) == datetime(2026, 11, 27, 1, 30, 5, tzinfo=UTC)
    assert period_start(1000, T) == datetime(2026, 11, 27, 1, 30, 2, tzinfo=UTC)
    assert period_start(5000, T).isoformat() == "2026-11-27T01:30:00+00:00"  # one query string for all
