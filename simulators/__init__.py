"""Bundled PLC simulators: a seeded discrete-event plant model (``model``), its ground-truth
ledger (``ledger``), fast-forward to files (``fastforward.run_fast_forward``) and live serving
over OPC UA and MQTT (``live.run_live``)."""
