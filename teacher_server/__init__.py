"""The teacher server: one causal LM served over gRPC (distill.v1.Teacher) plus HTTP health/metrics.

Run it with `python -m teacher_server --model DIR_OR_HUB_ID` (see `--help`).
"""

__version__ = "0.1.0"
