"""Load on a teacher server: many concurrent clients per tenant, bounded in count and time.

    python -m bench.load                                  # own server (tiny model), 16 clients, 30 s
    python -m bench.load --duration 60 --mix score:8,verify:1,generate:1 --seq-len 128
    python -m bench.load --target HOST:PORT [--pid PID]   # a running server; --pid samples its memory
    python -m bench.load --soak                           # 10 minutes, RSS and fds every 10 s
    python -m bench.load --tenants 3 --clients-per-tenant 4 --weights 1,2,4

Prints throughput (requests/s and tokens/s, where tokens are the positions the teacher returned
log-probs for: Score rows, Verify rows, Generate's new tokens), p50/p99 latency and calls by
status code per tenant; and, when it knows the server's pid (its own server, or --pid), the
server's RSS and open file descriptors every --sample-every seconds with their drift from the
end of the warm-up to the end. Exit status 1 when any call ended in an unexpected status
(anything but OK and --allow-codes).

Own server: `python -m teacher_server` on a random-weight model (scripts/tiny_model.py), one
torch thread, on 127.0.0.1. With --tenants N > 0 it writes a tenants file (N generated tenants,
random bearer tokens, weights from --weights, limits too generous to bind) and starts the server
with `--tenants FILE`; each tenant's clients send `authorization: Bearer <its token>`. With
--tenants 0 (the default) the server is open and the one tenant is labelled "open". With
--target, tenants come from --api-key NAME=TOKEN (repeatable); none means open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import os
import pathlib
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np
import yaml

from distill.client.teacher_client import DEFAULT_MAX_MESSAGE_BYTES, AsyncTeacherClient

RPCS = ("score", "verify", "generate")


@dataclass
class Shape:
    """Request sizes. Each request draws its own: 1..seqs_per_request sequences (prompts,
    drafts), each of 2..seq_len tokens, so the server sees a spread of sizes."""

    seq_len: int = 64
    seqs_per_request: int = 4
    top_k: int = 20
    draft_len: int = 4       # Verify: draft tokens per sequence
    new_tokens: int = 8      # Generate: max_new_tokens (one sample per prompt)


@dataclass
class TenantStats:
    latencies_s: list[float] = field(default_factory=list)   # every call, whatever its status
    codes: Counter = field(default_factory=Counter)           # status code name -> calls
    tokens: int = 0                                           # positions with log-probs returned


@dataclass
class LoadResult:
    tenants: dict[str, TenantStats]
    seconds: float
    samples: list[tuple[float, int, int]]   # the server's (seconds since start, RSS bytes, fds)

    def errors(self, allowed: tuple[str, ...] = ()) -> Counter:
        """Calls that ended in a status other than OK and `allowed`, by code, over all tenants."""
        return sum((Counter({c: n for c, n in s.codes.items() if c != "OK" and c not in allowed})
                    for s in self.tenants.values()), Counter())

    def drift(self, warmup_s: float) -> tuple[tuple[int, int], tuple[int, int]]:
        """((RSS after warm-up, RSS at the end), (fds after warm-up, fds at the end)): the first
        sample at or after `warmup_s` against the last one, taken with every client connected."""
        base = next((s for s in self.samples if s[0] >= warmup_s), None)
        if base is None or base is self.samples[-1]:
            raise ValueError(f"no samples after a {warmup_s} s warm-up in a {self.seconds:.0f} s run")
        end = self.samples[-1]
        return (base[1], end[1]), (base[2], end[2])


def sample_process(pid: int) -> tuple[int, int]:
    """(resident set size in bytes, open file descriptors) of a Linux process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kb * 1024, len(os.listdir(f"/proc/{pid}/fd"))


def parse_mix(text: str) -> dict[str, float]:
    """"score:8,verify:1,generate:1" -> {"score": 0.8, "verify": 0.1, "generate": 0.1}."""
    weights = {}
    for part in text.split(","):
        name, _, weight = part.partition(":")
        if name.strip() not in RPCS:
            raise ValueError(f"unknown rpc {name!r} in --mix; expected some of {RPCS}")
        weights[name.strip()] = float(weight or 1)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"--mix {text!r} has no positive weight")
    return {name: w / total for name, w in weights.items()}


async def _score(client, rng, shape: Shape, vocab: int) -> int:
    lengths = rng.integers(2, shape.seq_len + 1, rng.integers(1, shape.seqs_per_request + 1))
    starts = [int(rng.integers(1, n)) for n in lengths]
    await client.score([rng.integers(0, vocab, n) for n in lengths], starts, top_k=shape.top_k)
    return int(sum(lengths) - sum(starts))


async def _verify(client, rng, shape: Shape, vocab: int) -> int:
    n, G = int(rng.integers(1, shape.seqs_per_request + 1)), shape.draft_len
    prefixes = [rng.integers(0, vocab, rng.integers(1, shape.seq_len - G)) for _ in range(n)]
    drafts = [rng.integers(0, vocab, G) for _ in range(n)]
    mode = str(rng.choice(["speculative", "topk", "greedy"]))
    probs = None
    if mode == "speculative":   # the student's top-k form: k distinct ids per position, half the mass
        k = min(shape.top_k, vocab)
        probs = [(np.stack([rng.choice(vocab, k, replace=False) for _ in range(G)]),
                  np.full((G, k), 0.5 / k, np.float32)) for _ in range(n)]
    await client.verify(prefixes, drafts, probs, mode=mode,
                        top_k=shape.top_k if mode == "topk" else None, score_top_k=shape.top_k,
                        seed=int(rng.integers(1 << 32)))
    return n * (G + 1)


async def _generate(client, rng, shape: Shape, vocab: int) -> int:
    n = int(rng.integers(1, shape.seqs_per_request + 1))
    prompts = [rng.integers(0, vocab, rng.integers(1, shape.seq_len - shape.new_tokens + 1))
               for _ in range(n)]
    samples = await client.generate(prompts, max_new_tokens=shape.new_tokens,
                                    seed=int(rng.integers(1 << 32)))
    return sum(s.token_ids.numel() for per_prompt in samples for s in per_prompt)


_CALLS = {"score": _score, "verify": _verify, "generate": _generate}


async def _client_loop(client, stats: TenantStats, mix: dict[str, float], rng, shape: Shape,
                       vocab: int, deadline: float, started: itertools.count, max_requests: int):
    names, p = list(mix), list(mix.values())
    while time.monotonic() < deadline and next(started) < max_requests:
        call = _CALLS[names[rng.choice(len(names), p=p)]]
        start = time.perf_counter()
        tokens = 0
        try:
            # not `stats.tokens += await ...`: that reads stats.tokens before the await, and the
            # tenant's other clients add to it meanwhile
            tokens = await call(client, rng, shape, vocab)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        stats.tokens += tokens
        stats.latencies_s.append(time.perf_counter() - start)
        stats.codes[code] += 1


async def _sample_loop(pid: int, every_s: float, t0: float, samples: list, stop: asyncio.Event):
    """Sample now, every `every_s`, and once more when `stop` is set (clients still connected)."""
    while not stop.is_set():
        samples.append((time.monotonic() - t0, *sample_process(pid)))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    samples.append((time.monotonic() - t0, *sample_process(pid)))


async def _run_load(target, tenants, clients_per_tenant, duration_s, max_requests, shape, mix,
                    seed, pid, sample_every_s) -> LoadResult:
    # gRPC gives channels of one process with equal options one shared connection; a message
    # limit one byte apart per client gives each its own, as separate worker processes have.
    n = itertools.count()
    clients = {name: [AsyncTeacherClient(target, api_key=key,
                                         max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES - next(n))
                      for _ in range(clients_per_tenant)]
               for name, key in tenants.items()}
    every = [c for cs in clients.values() for c in cs]
    try:
        info = (await asyncio.gather(*(c.info() for c in every)))[0]   # connect before the clock
        shape = Shape(min(shape.seq_len, info.max_context), shape.seqs_per_request,
                      min(shape.top_k, info.max_top_k), min(shape.draft_len, info.max_draft_tokens),
                      shape.new_tokens)
        if shape.seq_len < max(shape.draft_len + 2, shape.new_tokens + 1):
            raise ValueError(f"--seq-len {shape.seq_len} leaves no room for the draft or new tokens")
        stats = {name: TenantStats() for name in tenants}
        t0 = time.monotonic()
        samples: list = []
        stop = asyncio.Event()
        sampler = None
        if pid:
            sampler = asyncio.create_task(_sample_loop(pid, sample_every_s, t0, samples, stop))
        started = itertools.count()
        await asyncio.gather(*(
            _client_loop(c, stats[name], mix, np.random.default_rng([seed, i]), shape,
                         info.vocab_size, t0 + duration_s, started, max_requests)
            for i, (name, c) in enumerate((n, c) for n, cs in clients.items() for c in cs)))
        seconds = time.monotonic() - t0
        stop.set()
        if sampler:
            await sampler
        return LoadResult(stats, seconds, samples)
    finally:
        await asyncio.gather(*(c.close() for c in every))


def run_load(target: str, tenants: dict[str, str | None], clients_per_tenant: int = 4,
             duration_s: float = 30, max_requests: int = 100_000, shape: Shape = Shape(),
             mix: dict[str, float] | None = None, seed: int = 0, pid: int | None = None,
             sample_every_s: float = 5) -> LoadResult:
    """Drive `clients_per_tenant` asyncio clients per tenant ({name: bearer token or None})
    against `target` until `duration_s` passes or `max_requests` calls have started; sample
    process `pid`'s RSS and fds every `sample_every_s` when given."""
    return asyncio.run(_run_load(target, tenants, clients_per_tenant, duration_s, max_requests, shape,
                                 mix or parse_mix("score:8,verify:1,generate:1"), seed, pid,
                                 sample_every_s))


def write_tenants_file(path: pathlib.Path, weights: list[float]) -> dict[str, str]:
    """The server's --tenants YAML with one generated tenant per weight (random bearer token,
    limits that do not bind); returns {name: token}."""
    tokens = {f"tenant-{i}": secrets.token_urlsafe(24) for i in range(len(weights))}
    path.write_text(yaml.safe_dump({"tenants": [
        dict(name=name, token_sha256=hashlib.sha256(token.encode()).hexdigest(), weight=weight,
             tokens_per_minute=10 ** 12, max_queued_tokens=10 ** 8,
             rpcs=["Score", "Verify", "Generate", "Info"])
        for (name, token), weight in zip(tokens.items(), weights)]}, sort_keys=False))
    return tokens


@contextlib.contextmanager
def own_server(preset: str, weights: list[float]):
    """A teacher on a fresh random-weight model; yields (TeacherProcess, {tenant: token or None})."""
    from scripts.tiny_model import make_tiny_model
    from teacher_server.process import TeacherProcess

    with tempfile.TemporaryDirectory() as tmp:
        tenants, args = {"open": None}, []
        if weights:
            tenants = write_tenants_file(pathlib.Path(tmp) / "tenants.yaml", weights)
            args = ["--tenants", str(pathlib.Path(tmp) / "tenants.yaml")]
        server = TeacherProcess(make_tiny_model(pathlib.Path(tmp) / "model", preset=preset), *args)
        try:
            server.wait_serving()
            yield server, tenants
        finally:
            server.terminate()


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def report(result: LoadResult, warmup_s: float) -> str:
    lines = [f"{'tenant':<12} {'calls':>7} {'req/s':>7} {'tokens/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
             f"  status codes"]
    totals = TenantStats()
    for s in result.tenants.values():
        totals.latencies_s += s.latencies_s
        totals.codes += s.codes
        totals.tokens += s.tokens
    rows = sorted(result.tenants.items()) + ([("all", totals)] if len(result.tenants) > 1 else [])
    for name, s in rows:
        calls = len(s.latencies_s)
        codes = ", ".join(f"{c} {n}" for c, n in sorted(s.codes.items())) or "-"
        lines.append(f"{name:<12} {calls:>7} {calls / result.seconds:>7.1f} "
                     f"{s.tokens / result.seconds:>9.0f} {percentile_ms(s.latencies_s, 50):>8.1f} "
                     f"{percentile_ms(s.latencies_s, 99):>8.1f}  {codes}")
    if result.samples:
        lines.append("\nserver: seconds, RSS MiB, open fds")
        lines += [f"{t:8.1f} {rss / 2**20:9.1f} {fds:5d}" for t, rss, fds in result.samples]
        try:
            (rss0, rss1), (fd0, fd1) = result.drift(warmup_s)
            lines.append(f"drift after a {warmup_s:.0f} s warm-up: RSS {rss0 / 2**20:.1f} -> "
                         f"{rss1 / 2**20:.1f} MiB ({(rss1 - rss0) / rss0:+.1%}), fds {fd0} -> {fd1}")
        except ValueError as exc:
            lines.append(f"drift: {exc}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--target", help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("--pid", type=int, help="with --target: the server's pid, to sample its memory")
    parser.add_argument("--api-key", action="append", default=[], metavar="NAME=TOKEN",
                        help="with --target: a tenant and its bearer token (repeatable)")
    parser.add_argument("--preset", default="tiny", help="own server's model (scripts/tiny_model.py)")
    parser.add_argument("--tenants", type=int, default=0, help="own server: generated tenants (0: open)")
    parser.add_argument("--weights", help="own server: tenant weights, e.g. 1,2,4 (default all 1)")
    parser.add_argument("--clients-per-tenant", type=int, default=16)
    parser.add_argument("--duration", type=float, help="seconds (default 30; 600 with --soak)")
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--mix", default="score:8,verify:1,generate:1")
    parser.add_argument("--seq-len", type=int, default=64, help="longest sequence")
    parser.add_argument("--seqs-per-request", type=int, default=4, help="most sequences per request")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--draft-len", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--soak", action="store_true", help="10 minutes, memory sampled every 10 s")
    parser.add_argument("--sample-every", type=float, help="seconds between samples (5; 10 with --soak)")
    parser.add_argument("--warmup", type=float, help="seconds before the drift baseline "
                                                     "(default a fifth of the run, at most 60)")
    parser.add_argument("--allow-codes", default="", help="status codes that are not errors, e.g. "
                                                          "RESOURCE_EXHAUSTED")
    args = parser.parse_args()
    duration = args.duration or (600 if args.soak else 30)
    warmup = args.warmup if args.warmup is not None else min(60, duration / 5)
    weights = [float(w) for w in args.weights.split(",")] if args.weights else [1.0] * args.tenants
    if len(weights) != args.tenants:
        parser.error(f"--weights has {len(weights)} values for --tenants {args.tenants}")
    shape = Shape(args.seq_len, args.seqs_per_request, args.top_k, args.draft_len, args.new_tokens)
    load = dict(clients_per_tenant=args.clients_per_tenant, duration_s=duration,
                max_requests=args.max_requests, shape=shape, mix=parse_mix(args.mix), seed=args.seed,
                sample_every_s=args.sample_every or (10 if args.soak else 5))
    if args.target:
        tenants = dict(kv.split("=", 1) for kv in args.api_key) or {"open": None}
        result = run_load(args.target, tenants, pid=args.pid, **load)
    else:
        with own_server(args.preset, weights) as (server, tenants):
            result = run_load(server.target, tenants, pid=server.proc.pid, **load)
    print(report(result, warmup))
    errors = result.errors(tuple(c for c in args.allow_codes.split(",") if c))
    if errors:
        print(f"unexpected errors: {dict(errors)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
