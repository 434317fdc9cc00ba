"""The collector: sources (OPC UA, MQTT) → normalize → store, in one process.

- :mod:`collector.sources`: async context managers yielding raw samples (and restart markers).
- :mod:`collector.pipeline`: :class:`~collector.pipeline.Collector`, one TaskGroup for it all.
- :mod:`collector.importer`: raw samples from a CSV / JSONL file through the same path.
"""
