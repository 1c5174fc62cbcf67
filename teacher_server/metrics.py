"""Prometheus metrics of one server, in their own registry (several servers can share a process).

Besides the server's own: the standard process_* (memory, CPU, open files) and python_info
families, and `teacher_info` (model, backend, dtype, version). On the vLLM backend the engine's
own figures that bear on scoring are copied from vLLM's registry at each scrape (ENGINE_METRICS).
"""

from __future__ import annotations

from prometheus_client import (REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info,
                               PlatformCollector, ProcessCollector, generate_latest)
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


# vLLM's in-process figures worth watching when it scores: KV-cache pressure and preemptions
# (prompt_logprobs requests recomputed), the engine's own queue, and prompt tokens and prefix-cache
# hits (how much of the scored text the cache saved). Names as vLLM exports them.
ENGINE_METRICS = ("vllm:kv_cache_usage_perc", "vllm:num_preemptions", "vllm:num_requests_running",
                  "vllm:num_requests_waiting", "vllm:prompt_tokens", "vllm:prefix_cache_queries",
                  "vllm:prefix_cache_hits")


class _Forwarded(Collector):
    """Chosen families of another registry (vLLM's, the process-global one), at scrape time."""

    def __init__(self, source: CollectorRegistry, names: tuple[str, ...]):
        self.source, self.names = source, set(names)

    def collect(self):
        return [family for family in self.source.collect() if family.name in self.names]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.info = Info("teacher", "The served model: id, backend, weights dtype, server version",
                         registry=r)
        self.max_batch_tokens = Gauge("teacher_max_batch_tokens",
                                      "Token budget of one forward pass (--max-batch-tokens): "
                                      "batch fill is teacher_batch_tokens over it", registry=r)
        self.request_latency = Histogram("teacher_request_seconds",
                                         "Duration of an rpc from arrival to answer, by rpc and "
                                         "status code", ["rpc", "code"], buckets=_LATENCY_BUCKETS,
                                         registry=r)
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
                                    "Time a request's sequences waited before a forward pass, by tenant "
                                    "(one observation per request and pass that ran some of them)",
                                    ["tenant"], buckets=_LATENCY_BUCKETS, registry=r)
        self.session_hits = Counter("teacher_session_hits",
                                    "Verify rounds that reused their session's KV cache, by tenant",
                                    ["tenant"], registry=r)
        self.session_misses = Counter("teacher_session_misses",
                                      "Verify rounds with a session key and nothing to reuse (new, "
                                      "evicted or expired), by tenant", ["tenant"], registry=r)
        self.session_tokens_reused = Counter("teacher_session_tokens_reused",
                                             "Tokens a Verify round did not run again thanks to its "
                                             "session's cache, by tenant", ["tenant"], registry=r)
        self.session_evictions = Counter("teacher_session_evictions",
                                         "Session caches dropped before their session ended, by tenant "
                                         "and reason (budget: --prefix-cache-mb; idle: --session-idle-s)",
                                         ["tenant", "reason"], registry=r)
        self.shared_prefix_tokens = Counter("teacher_shared_prefix_tokens",
                                            "Score tokens not run again because sequences of one tenant in "
                                            "a forward pass shared their start (--share-prefixes), by tenant",
                                            ["tenant"], registry=r)
        self.session_bytes = Gauge("teacher_session_bytes", "Bytes held by Verify session caches",
                                   registry=r)
        self.forward_latency = Histogram("teacher_forward_seconds",
                                         "Duration of one batched forward pass + scoring",
                                         buckets=_LATENCY_BUCKETS, registry=r)

    def forward_engine_metrics(self, names: tuple[str, ...] = ENGINE_METRICS) -> None:
        """Serve these families of the process-global registry (where vLLM keeps its own)."""
        self.registry.register(_Forwarded(REGISTRY, names))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
