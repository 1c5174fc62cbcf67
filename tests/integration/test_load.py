"""A short load run on a real server (bench/load.py's generator): 15 concurrent clients across
three tenants sending a Score/Verify/Generate mix of varying sizes. Every call succeeds, every
tenant is served, and from the end of the warm-up to the end the server's memory and open file
descriptors stay flat (the tenants file it writes: tests/unit/test_load.py)."""

from bench.load import Shape, parse_mix, run_load, write_tenants_file
from tests.helpers import TeacherProcess

WARMUP_S, DURATION_S, MAX_REQUESTS = 6, 20, 6000
# The server holds ~490 MiB (torch, the model, gRPC) and moved < 1 MiB after warm-up in the runs
# measured. Leaking one Score answer per call (4 sequences x <= 64 positions x k = 20, ids and
# log-probs: up to 40 KiB) over the ~1500 calls after warm-up would add tens of MiB.
MAX_RSS_GROWTH = 16 * 2 ** 20


def test_concurrent_load_all_ok_and_memory_flat(tiny_model_dir, tmp_path):
    tokens = write_tenants_file(tmp_path / "tenants.yaml", [1, 2, 4])
    server = TeacherProcess(tiny_model_dir, "--tenants", str(tmp_path / "tenants.yaml"))
    try:
        server.wait_serving()
        result = run_load(server.target, tokens, clients_per_tenant=5,
                          duration_s=DURATION_S, max_requests=MAX_REQUESTS,
                          shape=Shape(seq_len=64, seqs_per_request=4, top_k=20),
                          mix=parse_mix("score:8,verify:1,generate:1"), pid=server.proc.pid,
                          sample_every_s=2)
    finally:
        assert server.terminate() == 0, server.log()
    codes = {name: dict(stats.codes) for name, stats in result.tenants.items()}
    assert not result.errors(), codes
    assert sum(c["OK"] for c in codes.values()) >= 500, codes       # it was load
    assert all(stats.tokens > 0 for stats in result.tenants.values()), codes
    (rss_start, rss_end), (fds_start, fds_end) = result.drift(WARMUP_S)
    assert rss_end - rss_start < MAX_RSS_GROWTH, result.samples
    assert fds_end <= fds_start, result.samples
