"""Prometheus metrics of one server, in their own registry (several servers can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("teacher_requests", "RPCs handled, by rpc, status code and tenant",
                                ["rpc", "code", "tenant"], registry=r)
        self.rejections = Counter("teacher_rejections",
                                  "Requests refused before any work, by tenant and reason",
                                  ["tenant", "reason"], registry=r)
        self.tenant_tokens = Counter("teacher_tenant_tokens",
                                     "Tokens run through the model, by tenant", ["tenant"], registry=r)
        self.dropped = Counter("teacher_dropped_sequences",
                               "Queued sequences dropped before their forward pass because the "
                               "caller cancelled or its deadline passed", ["reason"], registry=r)
        self.queued_tokens = Gauge("teacher_queued_tokens", "Tokens waiting for a forward pass, by tenant",
                                   ["tenant"], registry=r)
        self.forward_running = Gauge("teacher_forward_running",
                                     "Forward passes running (0 or 1)", registry=r)
        self.tokens_scored = Counter("teacher_tokens_scored", "Positions scored (log-probs returned)",
                                     registry=r)
        self.tokens_generated = Counter("teacher_tokens_generated",
                                        "New tokens returned by Generate", registry=r)
        self.draft_tokens = Counter("teacher_draft_tokens", "Draft tokens sent to Verify",
                                    registry=r)
        self.accepted_tokens = Counter("teacher_accepted_tokens",
                                       "Draft tokens Verify accepted (acceptance rate: over "
                                       "teacher_draft_tokens)", registry=r)
        self.tokens_forward = Counter("teacher_tokens_forward",
                                      "Tokens run through the model, padding excluded", registry=r)
        self.batch_sequences = Histogram("teacher_batch_sequences", "Sequences per forward pass",
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_tokens = Histogram("teacher_batch_tokens", "Padded tokens per forward pass",
                                      buckets=tuple(2 ** i for i in range(6, 19)), registry=r)
        self.queue_wait = Histogram("teacher_queue_wait_seconds",
                                    "Time a sequence waited before its forward pass, by tenant",
                                    ["tenant"], buckets=_LATENCY_BUCKETS, registry=r)
        self.forward_latency = Histogram("teacher_forward_seconds",
                                         "Duration of one batched forward pass + scoring",
                                         buckets=_LATENCY_BUCKETS, registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
