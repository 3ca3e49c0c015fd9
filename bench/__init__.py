"""The load benchmark of issue 6, run with `python -m bench` (or `make bench`).

It starts the real server as the Procfile does, against a real Redis and a fake LINE
Messaging API on loopback, and drives it with simulated residents; a minimal echo bot
(`bench/baseline.py`) runs beside it so that every figure is also a ratio.
"""
