"""Least-work routing over teacher replicas: each call goes to the replica expected to answer first.

gRPC's `round_robin` gives every replica the same share of calls, however slow or busy it is: one
replica on a slower GPU, or busy with another team's job, holds up every step that waits on it.
Here the client keeps one channel per replica and sends each call to the replica with the least
expected wait:

    (tokens this client has in flight there + tokens the replica reported queued + this call's tokens)
        x the replica's recent seconds per token

- Tokens in flight: this client's own calls sent there and not yet answered.
- Tokens queued: every answer carries the replica's queue (trailing metadata `QUEUE_KEY`), so
  other workers' and other teams' load counts too.
- Seconds per token: an average over the replica's recent answers (latency / tokens), so a slow
  replica costs more per token.
- What a replica last reported goes stale: one not heard from for FORGET_S is unknown again and
  gets the next call (how a replica that was busy or slow and recovered is noticed); an unknown
  replica counts as free.

Failover: only replicas whose connection is up (or not yet tried) are chosen while there are
such; a call that fails UNAVAILABLE (the replica is draining, down or unreachable) marks the
replica down (1 s, doubling while it keeps failing, up to 30 s) and goes to the next best replica
at once; when every replica is down the call waits with backoff, like gRPC's own retries, up to
`max_attempts` attempts in all. A call with an affinity key (a Verify round of sessions: the
first sequence's session_key) goes to the replica that served that key last, while it is up: that
replica holds the sessions' caches, and anywhere else the round would run its whole prefix. A
`dns:///name:port` target is resolved here (every address of the name) and again every
RESOLVE_EVERY_S, and when every replica is down, so replicas that come and go are followed.
"""

from __future__ import annotations

import collections
import functools
import math
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

import grpc

QUEUE_KEY = "distill-queued-tokens"   # trailing metadata of every answer: the replica's queue
FORGET_S = 30.0
RESOLVE_EVERY_S = 10.0
DOWN_S, MAX_DOWN_S = 1.0, 30.0   # a replica that answered UNAVAILABLE is passed over this long
_USABLE = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE)
_RATE_WEIGHT = 0.3    # weight of the newest answer in the seconds-per-token average
AFFINITY_KEYS = 4096  # affinity keys remembered (least recently used forgotten first)


def names_replicas(target: str) -> bool:
    """Whether a target can name several replicas: a list, or a dns: name (one address, or
    another resolver scheme such as unix:, is left to gRPC alone)."""
    return target.startswith("dns:") or "," in target


def dns_name(target: str) -> tuple[str, str]:
    """(host, port) of a "dns:///host:port" (or "dns:host:port") target."""
    name = target.split("///", 1)[1] if "///" in target else target[len("dns:"):]
    host, _, port = name.rpartition(":")
    return host.strip("[]"), port or "443"


def replica_addresses(target: str) -> list[str]:
    """The replicas a target names, as host:port (a dns: name is looked up: OSError when it does
    not resolve)."""
    if target.startswith("dns:"):
        host, port = dns_name(target)
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        ips = dict.fromkeys(info[4][0] for info in infos)   # unique, in the resolver's order
        return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]
    return [p.strip() for p in target.split(",") if p.strip()]


@dataclass
class Replica:
    address: str
    channel: grpc.Channel
    in_flight_tokens: int = 0
    queued_tokens: int = 0            # as last reported by the replica
    reported_at: float = 0.0
    seconds_per_token: float | None = None   # None: unknown (not heard from lately)
    down_until: float = 0.0
    failures: int = 0                 # UNAVAILABLE answers since its last good one
    stub: object = None               # the service's stub on the channel
    state: grpc.ChannelConnectivity = grpc.ChannelConnectivity.IDLE
    answers: int = 0

    def expected_wait(self, tokens: int, now: float) -> float:
        if self.seconds_per_token is None or now - self.reported_at > FORGET_S:
            return 0.0
        return (self.in_flight_tokens + self.queued_tokens + tokens) * self.seconds_per_token


class LeastWorkRouter:
    """Calls teacher methods on the replica with the least expected wait (module docstring).
    Thread-safe: many threads may call at once, which is when the in-flight counts matter."""

    def __init__(self, target: str, make_channel: Callable[[str], grpc.Channel], stub_class: type,
                 max_attempts: int = 5):
        self.target = target
        self._make_channel, self._stub_class = make_channel, stub_class
        self._max_attempts = max(1, max_attempts)
        self._lock = threading.Lock()
        self._replicas: dict[str, Replica] = {}
        self._resolved_at = -math.inf
        self._pick_order = random.Random()   # breaks ties between equally idle replicas
        self._affinity: collections.OrderedDict[str, str] = collections.OrderedDict()   # key -> address
        self._resolve()

    @property
    def replicas(self) -> list[Replica]:
        with self._lock:
            return list(self._replicas.values())

    def _resolve(self) -> None:
        """(Re)read the target's addresses: new ones get a channel, vanished ones are closed."""
        try:
            addresses = replica_addresses(self.target)
        except OSError:   # the name does not resolve now: keep the replicas known
            return
        with self._lock:
            self._resolved_at = time.monotonic()
            gone = [a for a in self._replicas if a not in addresses]
            for address in gone:
                replica = self._replicas.pop(address)
                if not replica.in_flight_tokens:
                    replica.channel.close()
            for address in addresses:
                if address not in self._replicas:
                    channel = self._make_channel(address)
                    replica = self._replicas[address] = Replica(address, channel, stub=self._stub_class(channel))
                    channel.subscribe(functools.partial(setattr, replica, "state"), try_to_connect=True)

    def _pick(self, tokens: int, tried: set[str], affinity: str | None = None) -> Replica | None:
        """The replica to try next: the one that served `affinity` last if it is up and not yet
        tried, else the least expected wait among those up and not yet tried for this call, else
        (every one down or tried) None."""
        now = time.monotonic()
        with self._lock:
            candidates = [r for r in self._replicas.values() if r.address not in tried and r.down_until <= now]
            if not candidates:
                return None
            pinned = self._replicas.get(self._affinity.get(affinity, ""))
            if pinned in candidates:
                self._affinity.move_to_end(affinity)
                pinned.in_flight_tokens += tokens
                return pinned
            # connected (or idle) replicas first: one still connecting, or failing to, would hold
            # the call until its connection attempt times out
            candidates = [r for r in candidates if r.state in _USABLE] or candidates
            self._pick_order.shuffle(candidates)
            best = min(candidates, key=lambda r: r.expected_wait(tokens, now))
            best.in_flight_tokens += tokens
            return best

    def _answered(self, replica: Replica, tokens: int, seconds: float, trailers) -> None:
        queued = dict(trailers or ()).get(QUEUE_KEY)
        with self._lock:
            replica.in_flight_tokens -= tokens
            replica.answers += 1
            replica.failures = 0
            now = time.monotonic()
            rate = seconds / max(tokens, 1)
            fresh = replica.seconds_per_token is None or now - replica.reported_at > FORGET_S
            replica.seconds_per_token = rate if fresh else (
                _RATE_WEIGHT * rate + (1 - _RATE_WEIGHT) * replica.seconds_per_token)
            replica.queued_tokens = int(queued) if queued is not None and queued.isdigit() else 0
            replica.reported_at = now

    def _failed(self, replica: Replica, tokens: int, down: bool) -> None:
        with self._lock:
            replica.in_flight_tokens -= tokens
            if down:
                replica.down_until = time.monotonic() + min(DOWN_S * 2 ** replica.failures, MAX_DOWN_S)
                replica.failures += 1
            if replica.address not in self._replicas and not replica.in_flight_tokens:
                replica.channel.close()

    def call(self, method: str, request, tokens: int, timeout: float | None, metadata, affinity: str | None = None):
        """The stub's `method` ("Score", ...) on the best replica (the one holding `affinity`'s
        caches, when given and up); the response."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if time.monotonic() - self._resolved_at > RESOLVE_EVERY_S:
            self._resolve()
        tried: set[str] = set()
        backoff, error = 0.2, None
        for _ in range(self._max_attempts):
            replica = self._pick(tokens, tried, affinity)
            if replica is None:   # every replica down or tried: wait, look the name up again
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())) if deadline else backoff)
                backoff = min(backoff * 2, 5.0)
                self._resolve()
                tried.clear()
                with self._lock:
                    for r in self._replicas.values():
                        r.down_until = 0.0
                replica = self._pick(tokens, tried)
            left = None if deadline is None else deadline - time.monotonic()
            if replica is None or (left is not None and left <= 0):
                break
            tried.add(replica.address)
            started = time.monotonic()
            try:
                response, call = getattr(replica.stub, method).with_call(request, timeout=left, metadata=metadata)
            except grpc.RpcError as err:
                self._failed(replica, tokens, down=err.code() == grpc.StatusCode.UNAVAILABLE)
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                error = err
                continue
            self._answered(replica, tokens, time.monotonic() - started, call.trailing_metadata())
            if affinity:
                with self._lock:
                    self._affinity[affinity] = replica.address
                    self._affinity.move_to_end(affinity)
                    while len(self._affinity) > AFFINITY_KEYS:
                        self._affinity.popitem(last=False)
            return response
        if error is not None:
            raise error
        raise _NoReplica(self.target)


class _NoReplica(grpc.RpcError):
    """No replica could be tried before the deadline (the name resolves to nothing, or the time
    ran out while every replica was down)."""

    def __init__(self, target: str):
        super().__init__(f"no teacher replica of {target} could be reached")

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return str(self)

    def trailing_metadata(self):
        return ()
