"""Plain helpers the test lanes share (fixtures live in tests/conftest.py). No test module imports
another test module: what two of them need is here, by topic —

    tests.helpers               references (in-process forwards), refusals, worker configs, ports
    tests.helpers.batches       a fixed ragged batch and its unchunked float64 loss
    tests.helpers.ranks         two ranks of one job in spawned processes, collectives checked
    tests.helpers.servers       an in-process server with a gated backend; /metrics and the dashboard
    tests.helpers.bad_requests  malformed Score, Generate and Verify requests and their refusals
    tests.helpers.dockerfiles   the Dockerfiles read as instructions
    tests.helpers.combinations  the covering design of the options users combine
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import yaml

from student_worker.config import load_config
from teacher_server.process import TeacherProcess  # noqa: F401  (the tests' handle on a server process)

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port nobody listens on (free when asked; a test binds it soon after, or relies on it staying
    closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the teacher's answers against in-process forwards


def reference_logprobs(model, ids: list[int] | torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token t | tokens < t) for t = 1 .. T-1 from a plain in-process forward: [T-1, V]."""
    ids = torch.as_tensor(ids)
    with torch.no_grad():
        logits = model(ids[None]).logits[0, :-1].double()
    return torch.log_softmax(logits / temperature, dim=-1)


def random_sequences(n: int, lengths, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(lengths[i % len(lengths)]),), generator=g).tolist()
            for i in range(n)]


def ragged_sequences(seed: int, n: int, vocab: int = 512) -> tuple[list, list[int]]:
    """n numpy sequences of 2-39 ids below `vocab` and a score_from inside each."""
    import numpy as np

    g = np.random.default_rng(seed)
    seqs = [g.integers(0, vocab, g.integers(2, 40)) for _ in range(n)]
    starts = [int(g.integers(1, len(s))) for s in seqs]
    return seqs, starts


def check_against_reference(model, seq, score_from, scores, top_k, temperature=1.0, atol=1e-5):
    """A Score answer for `seq` is the in-process forward's: top-k, actual tokens' and tail log-probs."""
    ref = reference_logprobs(model, seq, temperature)[score_from - 1:]        # [N, V]
    ref_top, _ = ref.topk(top_k, -1)
    n = len(seq) - score_from
    assert scores.topk_ids.shape == (n, top_k)
    # the returned ids carry the reference's log-probs, in descending order
    torch.testing.assert_close(ref.gather(-1, scores.topk_ids), scores.topk_logprobs.double(),
                               atol=atol, rtol=0)
    torch.testing.assert_close(scores.topk_logprobs.double(), ref_top, atol=atol, rtol=0)
    # the same top-k sets, except where the k-th and (k+1)-th are tied within tolerance
    kth = ref_top[:, -1:]
    outside = ref.scatter(-1, scores.topk_ids, float("-inf")).max(-1, keepdim=True).values
    assert (outside <= kth + atol).all()
    actual = torch.tensor(seq[score_from:])
    torch.testing.assert_close(scores.token_logprobs.double(), ref.gather(-1, actual[:, None])[:, 0],
                               atol=atol, rtol=0)
    ref_tail = torch.logsumexp(ref.scatter(-1, scores.topk_ids, float("-inf")), -1)
    torch.testing.assert_close(scores.tail_logprobs.double(), ref_tail, atol=atol, rtol=1e-5)


def check_logprobs(model, prompt, sample, temperature=1.0, atol=1e-4):
    """The returned log-probs are an in-process forward's log_softmax(logits / T) at the sample."""
    ref = reference_logprobs(model, list(prompt) + sample.token_ids.tolist(), temperature)
    ref = ref[len(prompt) - 1:].gather(-1, sample.token_ids[:, None])[:, 0]
    torch.testing.assert_close(sample.logprobs.double(), ref, atol=atol, rtol=0)


def greedy_reference(model, prompt, max_new_tokens) -> list[int]:
    """Argmax continuation by full forwards, with no stop tokens at all."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def assert_refused(call, request, message: str, code: str = "INVALID_ARGUMENT") -> None:
    """The rpc refuses `request` with `code` and a message containing `message`."""
    import grpc

    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    assert err.value.code().name == code, err.value.details()
    assert message in err.value.details()


# ---- servers and workers as the tests start them


def write_tenants(path, *specs):
    """A --tenants file holding `specs` (dicts as the file's entries)."""
    path.write_text(yaml.safe_dump({"tenants": list(specs)}))
    return path


def vllm_env(cache_dir) -> dict:
    """In-process engine (starts in seconds, not a separate engine process), 1 GiB of KV cache
    (vLLM's own sizing fails on small machines), one OpenMP thread like the server's torch."""
    return dict(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1",
                VLLM_CACHE_ROOT=str(cache_dir), OMP_NUM_THREADS="1")


# the data of conftest's data_file fixture
EXAMPLES = [{"prompt": "rev abc=", "completion": "cba"}, {"prompt": "rev hello=", "completion": "olleh"},
            {"prompt": "rev xy=", "completion": "yx"}, {"prompt": "rev pqrs=", "completion": "srqp"}]


def worker_config(student_dir, target, data_file, *overrides, preset=None):
    """A short run of the tiny student on the fixed data against `target` (conftest's student_dir
    and data_file); `overrides` as on the command line."""
    return load_config(None, preset, [
        f"student.path={student_dir}", f"teacher.target={target}", f"data.source={data_file}",
        "data.batch_size=4", "sampling.max_new_tokens=6", "teacher.top_k=16", "optim.lr=3e-3",
        "train.steps=8", *overrides])


def worker_cmd(student_dir, target, data_file, out, *extra) -> list[str]:
    """`-m student_worker ...` arguments of a short gkd run (after `python -m` or `torchrun -m`)."""
    return ["student_worker", "--preset", "gkd", "--output-dir", str(out), f"student.path={student_dir}",
            f"teacher.target={target}", f"data.source={data_file}", "data.batch_size=2",
            "sampling.max_new_tokens=6", "teacher.top_k=8", *extra]
