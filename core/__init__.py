"""mieruka's shared kernel: plant model, normalize, figure math, store protocol and backends.

Nothing in here imports another mieruka package.
"""
