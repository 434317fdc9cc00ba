"""Fault specs: the CLI grammar, faults files, and what each fault means for the plant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.plant import Plant
from simulators.faults import Fault, FaultSpecError, check_sources, load_faults, parse_fault, with_rollover
from tests.e2e.plants import fast_plant


@pytest.mark.parametrize(("text", "fault"), [
    ("restart@60s", Fault("restart", 60.0, 5.0)),
    ("restart@1m+10s", Fault("restart", 60.0, 10.0)),
    ("rollover", Fault("rollover")),
    ("silence@30s+20s", Fault("silence", 30.0, 20.0)),
    ("bad_quality@500ms+2s/plc", Fault("bad_quality", 0.5, 2.0, None, "plc")),
    ("skew:-5s@10s+30s", Fault("skew", 10.0, 30.0, -5.0)),
    ("malformed:5%", Fault("malformed", 0.0, None, 0.05)),
    ("malformed:0.2@1s+3s/broker", Fault("malformed", 1.0, 3.0, 0.2, "broker")),
    ("disconnect@20s", Fault("disconnect", 20.0, 5.0)),
    ("seq_gap@10s", Fault("seq_gap", 10.0)),
    ("seq_gap:3@10s/edge", Fault("seq_gap", 10.0, None, 3.0, "edge")),
])
def test_parse(text: str, fault: Fault) -> None:
    assert parse_fault(text) == fault


@pytest.mark.parametrize(("text", "message"), [
    ("reboot@5s", "unknown fault 'reboot'"),
    ("silence@soon", "not a duration"),
    ("malformed", "needs a rate"),
    ("malformed:150%", "not in (0, 1]"),
    ("skew@5s", "needs an offset"),
    ("silence@5s+0s", "must be positive"),
    ("restart 60s", "is not a fault"),
    ("seq_gap:0.5@1s", "not a number of messages"),
])
def test_bad_specs_say_what_is_allowed(text: str, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_fault(text)


def test_faults_file(tmp_path: Path) -> None:
    f = tmp_path / "faults.yaml"
    f.write_text("- restart@60s\n- {kind: silence, at: 30s, duration: 20s, source: plc}\n"
                 "- {kind: malformed, value: 5%}\n", encoding="utf-8")
    assert load_faults(f) == [Fault("restart", 60.0, 5.0), Fault("silence", 30.0, 20.0, None, "plc"),
                              Fault("malformed", 0.0, None, 0.05)]
    f.write_text("- {kind: silence, at: later}\n", encoding="utf-8")
    with pytest.raises(FaultSpecError, match=r"\[0\].*not a duration"):
        load_faults(f)


def _plant() -> Plant:
    return fast_plant(4840, 1883)


def test_sources_are_checked() -> None:
    plant = _plant()
    check_sources([parse_fault("restart@1s/plc"), parse_fault("disconnect@1s/broker")], plant)
    with pytest.raises(FaultSpecError, match="unknown source 'plc-9'"):
        check_sources([parse_fault("restart@1s/plc-9")], plant)
    with pytest.raises(FaultSpecError, match="applies to OPC UA sources"):
        check_sources([parse_fault("restart@1s/broker")], plant)
    with pytest.raises(FaultSpecError, match="applies to MQTT sources"):
        check_sources([parse_fault("malformed:5%/plc")], plant)


def test_sparkplug_nodes_restart_and_lose_messages_json_publishers_do_not() -> None:
    import yaml

    from core.plant import dump_plant, parse_plant

    raw = yaml.safe_load(dump_plant(_plant()))
    raw["sources"]["edge"] = {"mqtt": {"port": 1884, "payload": "sparkplug", "group_id": "g", "edge_node_id": "n"}}
    plant = parse_plant(raw)
    check_sources([parse_fault("restart@1s/edge"), parse_fault("seq_gap@1s/edge")], plant)
    with pytest.raises(FaultSpecError, match="applies to OPC UA sources and Sparkplug B edge nodes"):
        check_sources([parse_fault("restart@1s/broker")], plant)
    with pytest.raises(FaultSpecError, match="applies to Sparkplug B sources"):
        check_sources([parse_fault("seq_gap@1s/broker")], plant)


def test_rollover_starts_counters_just_short_of_their_width() -> None:
    plant = with_rollover(_plant(), {"plc"})
    starts = {m.id: m.simulation.counter_start for _, m in plant.machines()}
    assert starts["ua-1"] == 2**16 - 3 and starts["ua-2"] == 2**16 - 3
    assert starts["mq-1"] == 0  # the MQTT source was not named
    everywhere = with_rollover(_plant())
    assert {m.simulation.counter_start for _, m in everywhere.machines() if m.source == "broker"} == {2**32 - 3}


def test_cli_rejects_a_bad_fault_with_exit_2(tmp_path: Path) -> None:
    from core.plant import dump_plant

    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(dump_plant(_plant()), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "mieruka.cli", "simulate", "--plant", str(plant_file), "--truth",
                        str(tmp_path / "l.jsonl"), "--duration", "1", "--fault", "restart@5s/broker"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "applies to OPC UA sources" in r.stderr
