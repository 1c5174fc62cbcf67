"""One teacher shared by tenants: tokens, rpcs, quotas, fair shares, deadlines, TLS and mTLS.

Real servers on 127.0.0.1 with a tenants file; raw stubs (no client retries) where the first
answer matters, the project's client where its retry behaviour is the point.
"""

import datetime
import hashlib
import ipaddress
import signal
import statistics
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from distill.client.teacher_client import TeacherClient, channel_credentials
from distill.tensors import pack
from distill.v1 import teacher_pb2 as pb
from distill.v1 import teacher_pb2_grpc as pb_grpc
from tests.helpers import TeacherProcess, random_sequences, write_tenants

VOCAB = 512
TOKENS = {name: f"secret-{name}" for name in ("alpha", "beta", "gamma", "rated", "small")}


def spec(name, **kw):
    return {"name": name, "token_sha256": hashlib.sha256(TOKENS[name].encode()).hexdigest(), **kw}


def bearer(name):
    return (("authorization", f"Bearer {TOKENS[name]}"),)


def score_request(n_seqs=1, length=100, top_k=1, seed=0):
    seqs = random_sequences(n_seqs, [length], VOCAB, seed=seed)
    return pb.ScoreRequest(top_k=top_k, sequences=[
        pb.ScoreSequence(token_ids=pack(np.asarray(s, dtype=np.int32)), score_from=1) for s in seqs])


def metric(http, name, **labels) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{http}/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.fixture(scope="module")
def tenants_file(tmp_path_factory):
    return write_tenants(
        tmp_path_factory.mktemp("tenants") / "tenants.yaml",
        spec("alpha"), spec("beta", rpcs=["Score"]), spec("gamma"),
        spec("rated", tokens_per_minute=3000), spec("small", max_queued_tokens=150))


@pytest.fixture(scope="module")
def shared(tiny_model_dir, tenants_file):
    server = TeacherProcess(tiny_model_dir, "--tenants", str(tenants_file), "--max-wait-ms", "0",
                            "--max-request-sequences", "64", "--max-request-tokens", "12000")
    server.wait_serving()
    yield server
    assert server.terminate() == 0, server.log()


@pytest.fixture(scope="module")
def stub(shared):
    with grpc.insecure_channel(shared.target) as channel:
        yield pb_grpc.TeacherStub(channel)


def refused(call, request, metadata, code, message):
    with pytest.raises(grpc.RpcError) as err:
        call(request, metadata=metadata, timeout=30)
    assert err.value.code() == code, err.value.details()
    assert message in err.value.details(), err.value.details()
    return err.value


# --- who may call what ------------------------------------------------------------------------

def test_missing_and_wrong_tokens_are_unauthenticated(shared, stub):
    before = metric(shared.http, "teacher_rejections_total", tenant="unknown", reason="unauthenticated")
    refused(stub.Info, pb.InfoRequest(), None, grpc.StatusCode.UNAUTHENTICATED,
            "authorization: Bearer <token>")
    refused(stub.Score, score_request(), (("authorization", "Bearer nope"),),
            grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
    refused(stub.Score, score_request(), (("authorization", TOKENS["alpha"]),),  # no "Bearer"
            grpc.StatusCode.UNAUTHENTICATED, "authorization: Bearer <token>")
    after = metric(shared.http, "teacher_rejections_total", tenant="unknown", reason="unauthenticated")
    assert after - before == 3
    assert "OPEN" not in shared.log()


def test_each_tenant_calls_only_its_rpcs(shared, stub):
    assert stub.Info(pb.InfoRequest(), metadata=bearer("alpha"), timeout=30).vocab_size == VOCAB
    assert len(stub.Score(score_request(), metadata=bearer("beta"), timeout=30).results) == 1
    refused(stub.Info, pb.InfoRequest(), bearer("beta"), grpc.StatusCode.PERMISSION_DENIED,
            "tenant 'beta' may not call Info; it may call Score")
    assert metric(shared.http, "teacher_requests_total", rpc="Score", code="OK", tenant="beta") >= 1


def test_health_needs_no_token(shared):
    with grpc.insecure_channel(shared.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_client_sends_its_api_key(shared):
    with TeacherClient(shared.target, api_key=TOKENS["alpha"]) as client:
        [scores] = client.score([list(range(10))], 1, top_k=2)
    assert scores.topk_ids.shape == (9, 2)


def test_a_token_removed_from_the_file_is_revoked_on_sighup(tiny_model_dir, tmp_path, shared):
    path = write_tenants(tmp_path / "t.yaml", spec("alpha"), spec("gamma"))
    server = TeacherProcess(tiny_model_dir, "--tenants", str(path))
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.TeacherStub(channel)
            assert stub.Info(pb.InfoRequest(), metadata=bearer("gamma"), timeout=30).vocab_size
            write_tenants(path, spec("alpha"))
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for_log("tenants reloaded")
            refused(stub.Info, pb.InfoRequest(), bearer("gamma"), grpc.StatusCode.UNAUTHENTICATED,
                    "unknown or revoked token")
            assert stub.Info(pb.InfoRequest(), metadata=bearer("alpha"), timeout=30).vocab_size
            path.write_text("tenants: [{name: broken}]")      # a bad file keeps the old tenants
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for_log("keeping the previous tenants")
            assert stub.Info(pb.InfoRequest(), metadata=bearer("alpha"), timeout=30).vocab_size
    finally:
        assert server.terminate() == 0, server.log()


def test_an_open_server_says_so(teacher):
    # with the port it really listens on (the tests ask for port 0)
    assert f"OPEN to anyone who can reach 127.0.0.1:{teacher.grpc_port} " in teacher.log()


# --- limits -----------------------------------------------------------------------------------

def test_per_request_caps_name_the_limit(stub):
    refused(stub.Score, score_request(n_seqs=65, length=3), bearer("alpha"),
            grpc.StatusCode.INVALID_ARGUMENT, "65 sequences, over the limit of 64 per request")
    refused(stub.Score, score_request(n_seqs=60, length=250), bearer("alpha"),
            grpc.StatusCode.INVALID_ARGUMENT, "15000 tokens through the model, over the limit of 12000")
    prompts = [pack(np.arange(4, dtype=np.int32))] * 2
    refused(stub.Generate, pb.GenerateRequest(prompt_ids=prompts, num_samples=33), bearer("alpha"),
            grpc.StatusCode.INVALID_ARGUMENT, "66 sequences")
    refused(stub.Score, score_request(n_seqs=2, length=100), bearer("small"),
            grpc.StatusCode.INVALID_ARGUMENT, "more than tenant 'small''s max_queued_tokens of 150")


def test_oversized_metadata_is_refused(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Info(pb.InfoRequest(), metadata=bearer("alpha") + (("x-junk", "j" * 40_000),), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert stub.Info(pb.InfoRequest(), metadata=bearer("alpha"), timeout=30).vocab_size


def test_over_the_rate_limit_is_refused_at_once_with_a_retry_hint(shared, stub):
    """'rated' may run 3000 tokens a minute (50 a second, bursts up to 3000): after about 30
    requests of 100 tokens it is refused, quickly, with gRPC's retry pushback."""
    request = score_request()
    for _ in range(100):
        start = time.perf_counter()
        try:
            stub.Score(request, metadata=bearer("rated"), timeout=30)
        except grpc.RpcError as refusal:
            elapsed, err = time.perf_counter() - start, refusal
            break
    else:
        pytest.fail("never refused")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over its quota of 3000 tokens per minute" in err.details()
    assert elapsed < 0.05, f"refusal took {elapsed * 1000:.0f} ms"
    pushback = int(dict(err.trailing_metadata())["grpc-retry-pushback-ms"])
    assert 0 < pushback <= 2000     # at most 100 tokens at 50 a second
    # other tenants are not affected
    assert stub.Score(score_request(), metadata=bearer("gamma"), timeout=30).results

    # the client honours the hint: refused once, retried after the pushback, then served
    refusals = metric(shared.http, "teacher_rejections_total", tenant="rated", reason="rate")
    with TeacherClient(shared.target, api_key=TOKENS["rated"]) as client:
        start = time.perf_counter()
        [scores] = client.score([random_sequences(1, [100], VOCAB)[0]], 1, top_k=1)
        waited = time.perf_counter() - start
    assert scores.token_logprobs.shape == (99,)
    assert metric(shared.http, "teacher_rejections_total", tenant="rated", reason="rate") > refusals
    assert waited > 0.5 * pushback / 1000


def test_expired_and_cancelled_requests_never_reach_the_model(shared, stub):
    """A long Generate holds the forward thread; a Score whose deadline passes while queued, and
    one its caller cancels, are dropped without a forward pass."""
    http = shared.http
    before = {r: metric(http, "teacher_dropped_sequences_total", reason=r) for r in ("deadline", "cancelled")}
    forward_before = metric(http, "teacher_tokens_forward_total")
    generate = pb.GenerateRequest(prompt_ids=[pack(np.arange(1, 5, dtype=np.int32))] * 2,
                                  num_samples=32, max_new_tokens=170, stop_token_ids=[VOCAB - 1])
    busy = stub.Generate.future(generate, metadata=bearer("alpha"), timeout=120)
    _wait(lambda: metric(http, "teacher_forward_running") or busy.done())
    assert not busy.done(), busy.exception()
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(score_request(n_seqs=3), metadata=bearer("gamma"), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    cancelled = stub.Score.future(score_request(n_seqs=2), metadata=bearer("gamma"), timeout=60)
    _wait(lambda: metric(http, "teacher_queued_tokens", tenant="gamma"))
    cancelled.cancel()
    _wait(lambda: not metric(http, "teacher_queued_tokens", tenant="gamma"))
    assert not busy.done() and metric(http, "teacher_forward_running") == 1, \
        "the Generate must still hold the model, or the Scores could have run"
    samples = busy.result().samples
    after = {r: metric(http, "teacher_dropped_sequences_total", reason=r) for r in before}
    assert after["deadline"] - before["deadline"] == 3
    assert after["cancelled"] - before["cancelled"] == 2
    # the model ran the Generate's tokens only
    assert metric(http, "teacher_tokens_forward_total") - forward_before == 2 * 32 * (4 + 170)
    assert len(samples) == 64


# --- fair shares ------------------------------------------------------------------------------

def _flood(target, name, clients, stop, latencies=None, think_s=0.0, n_seqs=4):
    """`clients` threads sending Score requests as `name` until `stop` is set."""
    def loop(i):
        with grpc.insecure_channel(target) as channel:
            call = pb_grpc.TeacherStub(channel).Score
            request = score_request(n_seqs=n_seqs, length=128, seed=i)
            while not stop.is_set():
                start = time.perf_counter()
                call(request, metadata=bearer(name), timeout=60)
                if latencies is not None:
                    latencies.append(time.perf_counter() - start)
                stop.wait(think_s)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    return threads


def _run_for(threads, stop, until):
    until()
    stop.set()
    for t in threads:
        t.join()


@pytest.fixture(scope="module")
def fair(tiny_model_dir, tenants_file):
    """Forward passes of two 128-token sequences: a request of 4 or 8 spans several passes."""
    server = TeacherProcess(tiny_model_dir, "--tenants", str(tenants_file), "--max-wait-ms", "0",
                            "--max-batch-tokens", "256")
    server.wait_serving()
    yield server
    assert server.terminate() == 0, server.log()


def test_a_flooding_tenant_does_not_slow_a_light_one_much(fair):
    def light_latencies(with_flood: bool) -> list[float]:
        latencies, stop = [], threading.Event()
        flood_stop = threading.Event()
        flood = _flood(fair.target, "alpha", 3, flood_stop) if with_flood else []
        light = _flood(fair.target, "beta", 1, stop, latencies, think_s=0.02, n_seqs=8)
        _run_for(light, stop, lambda: _wait(lambda: len(latencies) >= 40))
        _run_for(flood, flood_stop, lambda: None)
        return latencies[5:]     # after warm-up

    alone = statistics.median(light_latencies(False))
    contended = statistics.median(light_latencies(True))
    print(f"light tenant's median latency: {alone * 1000:.1f} ms alone, {contended * 1000:.1f} ms "
          f"beside a flood ({contended / alone:.2f}x)")
    assert contended <= 2 * alone, f"{contended * 1000:.1f} ms vs {alone * 1000:.1f} ms alone"


def test_saturating_tenants_get_equal_shares(fair):
    http, stop = fair.http, threading.Event()
    tokens = lambda: {t: metric(http, "teacher_tenant_tokens_total", tenant=t) for t in ("alpha", "gamma")}
    threads = _flood(fair.target, "alpha", 3, stop) + _flood(fair.target, "gamma", 3, stop)
    try:
        _wait(lambda: all(metric(http, "teacher_queued_tokens", tenant=t) for t in ("alpha", "gamma")))
        start = tokens()
        _wait(lambda: sum(tokens().values()) - sum(start.values()) >= 60_000)
        end = tokens()
    finally:
        _run_for(threads, stop, lambda: None)
    served = {t: end[t] - start[t] for t in end}
    share = served["alpha"] / sum(served.values())
    assert 0.45 <= share <= 0.55, served


def _wait(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)   # polling a condition, not waiting for time to pass


# --- TLS and mutual TLS -----------------------------------------------------------------------

def _certificates(folder):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA;
    plus a client certificate from another CA. PEM files in `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(name, issuer=None, ca=False, ip=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer[0].subject if issuer else subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ip:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert, key

    ca = issue("ca", ca=True)
    issue("server", ca, ip="127.0.0.1")
    issue("client", ca)
    issue("stranger", issue("other-ca", ca=True))
    return {name: str(folder / name) for name in ("ca", "server", "client", "stranger")}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return _certificates(tmp_path_factory.mktemp("certs"))


def _tls_server(model_dir, certs, *extra):
    creds = channel_credentials(tls_ca=f"{certs['ca']}.pem", tls_cert=f"{certs['client']}.pem",
                                tls_key=f"{certs['client']}.key")
    server = TeacherProcess(model_dir, "--tls-cert", f"{certs['server']}.pem", "--tls-key",
                            f"{certs['server']}.key", *extra, credentials=creds)
    server.wait_serving()
    return server


def test_tls(tiny_model_dir, certs):
    server = _tls_server(tiny_model_dir, certs)
    try:
        with TeacherClient(server.target, tls_ca=f"{certs['ca']}.pem") as client:
            assert client.info().vocab_size == VOCAB
        with TeacherClient(server.target, timeout=5, max_attempts=1) as plaintext:
            with pytest.raises(grpc.RpcError) as err:
                plaintext.info()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.terminate() == 0, server.log()


def test_mutual_tls_refuses_clients_without_a_valid_certificate(tiny_model_dir, certs):
    server = _tls_server(tiny_model_dir, certs, "--tls-client-ca", f"{certs['ca']}.pem")
    ca = f"{certs['ca']}.pem"
    try:
        with TeacherClient(server.target, tls_ca=ca, tls_cert=f"{certs['client']}.pem",
                           tls_key=f"{certs['client']}.key") as client:
            assert client.info().vocab_size == VOCAB
        for kw in ({}, {"tls_cert": f"{certs['stranger']}.pem", "tls_key": f"{certs['stranger']}.key"}):
            with TeacherClient(server.target, timeout=5, max_attempts=1, tls_ca=ca, **kw) as client:
                with pytest.raises(grpc.RpcError) as err:
                    client.info()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, kw
        assert "mutual TLS" in server.log()
    finally:
        assert server.terminate() == 0, server.log()


def test_tls_settings_are_checked_at_start(tiny_model_dir, certs):
    from teacher_server.config import ServerSettings

    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        ServerSettings(model=str(tiny_model_dir), tls_cert=f"{certs['server']}.pem")
    with pytest.raises(ValueError, match="needs --tls-cert"):
        ServerSettings(model=str(tiny_model_dir), tls_client_ca=f"{certs['ca']}.pem")
