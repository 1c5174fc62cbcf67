"""bench/load.py's tenants file, without a server (the load run: tests/integration/test_load.py)."""

import hashlib

import yaml

from bench.load import write_tenants_file


def test_tenants_file_has_the_servers_format(tmp_path):
    """What bench/load.py --tenants N hands the server's --tenants flag: one entry per weight,
    the sha256 of each generated bearer token, every rpc allowed."""
    tokens = write_tenants_file(tmp_path / "tenants.yaml", [1, 2])
    entries = yaml.safe_load((tmp_path / "tenants.yaml").read_text())["tenants"]
    assert [(e["name"], e["weight"]) for e in entries] == [("tenant-0", 1), ("tenant-1", 2)]
    assert len(set(tokens.values())) == 2
    for e in entries:
        assert e["token_sha256"] == hashlib.sha256(tokens[e["name"]].encode()).hexdigest()
        assert e["rpcs"] == ["Score", "Verify", "Generate", "Info"]
        assert e["tokens_per_minute"] > 0 and e["max_queued_tokens"] > 0
