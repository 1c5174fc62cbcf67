"""Shared fixtures: tiny random-weight models on disk and real teacher servers on 127.0.0.1."""

from __future__ import annotations

import pytest
import torch

from scripts.tiny_model import make_tiny_model
from teacher_server.process import TeacherProcess  # noqa: F401  (tests import it from here)

torch.set_num_threads(1)  # the test process shares 2 cores with the servers it starts


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def real_model_dir():
    """SmolLM2-135M-Instruct as a float32 Hugging Face folder: `make setup` fetches and converts
    it once (scripts/fetch_model.py); here it is only looked up, or made if missing."""
    from scripts.fetch_model import DownloadError, fetch

    try:
        return fetch("smollm2-135m-instruct")
    except DownloadError as err:
        pytest.skip(f"SmolLM2-135M-Instruct is not in the cache and could not be fetched "
                    f"(offline?): {err}")


@pytest.fixture(scope="session")
def reference_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="session")
def teacher(tiny_model_dir):
    """One server for the session. Small message limit so the over-size test stays cheap;
    a wait long enough that concurrent test requests really get merged."""
    server = TeacherProcess(tiny_model_dir, "--max-message-mb", "4", "--max-wait-ms", "20",
                            "--max-batch-tokens", "2048")
    server.wait_serving()
    yield server
    assert server.terminate() == 0, server.log()


@pytest.fixture(scope="session")
def stub(teacher):
    """A raw distill.v1 stub on the session server (no client-side checks, no retries), allowed
    to send more than the server accepts so that over-size requests reach it."""
    import grpc

    from distill.v1 import teacher_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(teacher.target, options=[("grpc.max_send_message_length", 64 << 20)])
    yield pb_grpc.TeacherStub(channel)
    channel.close()


@pytest.fixture(scope="session")
def client(teacher):
    from distill.client.teacher_client import TeacherClient

    with TeacherClient(teacher.target, timeout=60) as c:
        yield c


def assert_refused(call, request, message: str, code: str = "INVALID_ARGUMENT") -> None:
    """The rpc refuses `request` with `code` and a message containing `message`."""
    import grpc

    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    assert err.value.code().name == code, err.value.details()
    assert message in err.value.details()


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
