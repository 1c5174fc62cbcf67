"""Assembles the teacher: backend -> batcher -> gRPC servicer (+ health, reflection) and HTTP app.

Life cycle: bind ports (health NOT_SERVING) -> warm-up forward pass -> SERVING -> on SIGTERM or
SIGINT: NOT_SERVING, new calls get UNAVAILABLE, in-flight calls get `grace_seconds` to finish,
exit 0. While serving, a forward pass running longer than `max_forward_seconds` turns health
NOT_SERVING (a hung model: orchestrators replace the replica, clients go elsewhere); SERVING
again when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import gc
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
import torch
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from distill.v1 import teacher_pb2 as pb
from teacher_server import __version__, protocol
from teacher_server.backends import Backend, load_backend, run_batch
from teacher_server.batcher import Batcher
from teacher_server.config import HTTP_OFF, ServerSettings
from teacher_server.http import Readiness, create_app
from teacher_server.metrics import Metrics
from teacher_server.protocol.text import TextCodec
from teacher_server.scoring import ScoreItem
from teacher_server.service import TeacherServicer, add_to_server
from teacher_server.tenants import Tenants

log = logging.getLogger("teacher_server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Teacher"].full_name


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the teacher's drain sequence owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _server_credentials(s: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS for the gRPC port; with a client CA, clients must present a certificate it signed."""
    if not s.tls_cert:
        return None
    read = lambda path: Path(path).read_bytes()
    return grpc.ssl_server_credentials(
        [(read(s.tls_key), read(s.tls_cert))],
        root_certificates=read(s.tls_client_ca) if s.tls_client_ca else None,
        require_client_auth=bool(s.tls_client_ca))


class ForwardClock:
    """Wraps the batcher's forward callable (run on its forward threads, several at once for a
    backend with batches in flight) to know how long the oldest pass under way has run."""

    def __init__(self, run):
        self._run = run
        self._started: dict[int, float] = {}    # forward thread id -> its pass's start

    def __call__(self, items: list) -> list:
        thread = threading.get_ident()
        self._started[thread] = time.monotonic()
        try:
            return self._run(items)
        finally:
            del self._started[thread]

    def running_for(self) -> float:
        """Seconds the oldest pass under way has run (0 when none runs)."""
        started = min(self._started.values(), default=None)
        return 0.0 if started is None else time.monotonic() - started


class TeacherServer:
    def __init__(self, settings: ServerSettings, backend: Backend | None = None):
        self.settings = settings
        self.backend = backend or load_backend(settings)
        self.metrics = Metrics()
        self.readiness = Readiness()
        self.tenants = Tenants(settings.tenants)
        tokenizer = getattr(self.backend, "tokenizer", None)
        text = None if tokenizer is None else TextCodec(tokenizer, self.backend.info.eos_ids)
        self.backend.info.features = dataclasses.replace(self.backend.info.features, score_text=text is not None)
        self.limits = protocol.limits_for(self.backend.info, settings.max_top_k, settings.max_context,
                                          settings.max_draft_tokens, settings.max_request_sequences,
                                          settings.max_request_tokens, settings.max_batch_tokens, text)
        self.info = protocol.info_response(
            self.backend.info, self.limits, max_batch_tokens=settings.max_batch_tokens,
            max_message_bytes=settings.max_message_bytes, server_version=__version__)
        self.metrics.info.info(dict(model=self.info.model_id, backend=self.info.backend,
                                    dtype=self.backend.info.model_dtype, version=__version__))
        self.metrics.max_batch_tokens.set(settings.max_batch_tokens)
        if hasattr(self.backend, "metrics"):
            self.backend.metrics = self.metrics
        if getattr(self.backend, "sessions", None) is not None:
            self.backend.sessions.metrics = self.metrics
        if self.info.backend == "vllm":
            self.metrics.forward_engine_metrics()
        self.forward_clock = ForwardClock(functools.partial(run_batch, self.backend))
        self.grpc_port = self.http_port = 0
        self.stuck = False            # a forward pass is over max_forward_seconds
        self._watchdog: asyncio.Task | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        await self.bind()
        await self.warm_up()

    async def bind(self) -> None:
        """Start the batcher and both servers; health says NOT_SERVING until warm_up()."""
        s = self.settings
        # Score, Verify and Generate share one queue and forward threads; run_batch splits by
        # kind (Score and Verify items even share forward passes).
        self.batcher = Batcher(self.forward_clock,
                               max_batch_tokens=s.max_batch_tokens, max_wait_s=s.max_wait_ms / 1000,
                               max_queued_tokens=s.max_queued_tokens, metrics=self.metrics,
                               batches_in_flight=getattr(self.backend, "batches_in_flight", 1))
        self.batcher.start()
        self.grpc = grpc.aio.server(options=[
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_metadata_size", s.max_metadata_kb * 1024),
            # answer clients' keepalive pings (how they notice a frozen replica) however often
            # they come: gRPC's default closes connections that ping more than every 5 minutes
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            ("grpc.http2.max_ping_strikes", 0),
        ])
        self.servicer = TeacherServicer(self.batcher, self.limits, self.info, self.metrics,
                                        self.tenants)
        add_to_server(self.servicer, self.grpc)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{s.host}:{s.port}"
        credentials = _server_credentials(s)
        self.grpc_port = (self.grpc.add_secure_port(address, credentials) if credentials
                          else self.grpc.add_insecure_port(address))
        if not self.grpc_port:
            raise RuntimeError(f"could not bind the gRPC port {s.host}:{s.port}")
        if self.tenants.open:   # said once the port is bound: --port 0 picks it only now
            log.warning("no --tenants file: this teacher is OPEN to anyone who can reach %s:%d "
                        "(fine on a private network or for local use; see the deployment guide)",
                        s.host, self.grpc_port)
        await self.grpc.start()

        self._http_task = None
        if s.http_port != HTTP_OFF:
            sock = socket.create_server((s.host, s.http_port))
            self.http_port = sock.getsockname()[1]
            # log_config=None: uvicorn logs through the root handler (text or JSON) like the rest
            config = uvicorn.Config(create_app(self.readiness, self.metrics, self.info),
                                    log_level="warning", access_log=False, lifespan="off",
                                    log_config=None)
            self._http = _HttpServer(config)
            self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        http = f"{s.host}:{self.http_port}" if self._http_task else "off"
        log.info("listening: grpc %s:%d http %s (%s)", s.host, self.grpc_port, http,
                 "mutual TLS" if s.tls_client_ca else "TLS" if s.tls_cert else "plaintext")

    async def warm_up(self) -> None:
        """One forward pass (allocations, lazy init), then SERVING."""
        await self.batcher.submit([ScoreItem.one(torch.tensor([max(self.backend.info.bos, 0)] * 2),
                                                 1, 1)])
        # The model, the libraries and their caches are loaded for good: moved out of the
        # collector's sight, a full collection (one every few large requests, whose per-sequence
        # objects it counts) walks only what requests allocate, not the ~400k startup objects.
        gc.freeze()
        await self._set_ready(True)
        if self.settings.max_forward_seconds:
            self._watchdog = asyncio.create_task(self._watch_forward(), name="forward-watchdog")
        log.info("ready: %s (%s, vocabulary %d)", self.info.model_id, self.info.backend,
                 self.info.vocab_size)

    async def _watch_forward(self) -> None:
        """Health follows the model: NOT_SERVING while a forward pass is over the limit."""
        limit = self.settings.max_forward_seconds
        while not self.servicer.draining:
            running = self.forward_clock.running_for()
            if running > limit and not self.stuck:
                self.stuck = True
                log.error("a forward pass has run for %.0f s (limit %.0f s, "
                          "--max-forward-seconds): health is NOT_SERVING until it ends",
                          running, limit)
                await self._set_ready(False)
            elif running <= limit and self.stuck:
                self.stuck = False
                log.warning("the stuck forward pass ended: SERVING again")
                await self._set_ready(True)
            # a quarter of the limit: the state flips within 25% of it (at most every 5 s)
            await asyncio.sleep(min(limit / 4, 5.0))

    async def _set_ready(self, ready: bool) -> None:
        self.readiness.ready = ready
        await self._set_health(health_pb2.HealthCheckResponse.SERVING if ready
                               else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _set_health(self, status) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new calls, give in-flight ones `grace` seconds, then close everything."""
        grace = self.settings.grace_seconds if grace is None else grace
        log.info("draining (grace %.1f s)", grace)
        self.readiness.ready = False
        self.servicer.draining = True
        if self._watchdog:
            self._watchdog.cancel()
        await self.health.enter_graceful_shutdown()
        try:
            await asyncio.wait_for(self.servicer.idle.wait(), grace)
        except asyncio.TimeoutError:
            log.warning("%d calls still running after %.1f s; cancelling them",
                        self.servicer.in_flight, grace)
        # Unary work is done; what is left are streams (health Watch) that never end by
        # themselves: a short grace lets the last responses flush, then they are cancelled.
        await self.grpc.stop(0.5)
        await self.batcher.close()
        if self._http_task:
            self._http.should_exit = True
            await self._http_task
        self._stopped.set()
        log.info("stopped")

    def reload_tenants(self) -> None:
        """SIGHUP: read the tenants file again; a bad file leaves the current tenants in force."""
        try:
            self.tenants.reload()
            log.info("tenants reloaded from %s", self.tenants.path)
        except ValueError as exc:
            log.error("%s; keeping the previous tenants", exc)

    async def wait_closed(self) -> None:
        await self._stopped.wait()


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next request (Linux; a no-op elsewhere).

    By default glibc hands memory back to the OS once twice the last large block is free at the
    top of the heap, so the MB-sized buffers of every large request (ids, logits, response
    messages) come back as fresh pages, a page fault per 4 KiB: measured, 40% of the event
    loop's time on a Score of 1024 sequences. Here blocks under 32 MiB (glibc's own ceiling for its
    adaptive threshold) come from the heap, and up to 256 MiB of free heap is kept.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:     # not glibc
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)


async def serve(settings: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    keep_freed_memory()
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    try:
        server = TeacherServer(settings)
    except ValueError as exc:   # a model, tenants file or engine argument we cannot serve
        log.error("cannot start: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        raise SystemExit(2) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not server.tenants.open:
        loop.add_signal_handler(signal.SIGHUP, server.reload_tenants)
    await server.start()
    await stop.wait()
    await server.stop()
