"""Server settings: one pydantic-settings model, read from the command line and the environment.

Every option is a flag (`--max-batch-tokens 8192`) and an environment variable with the prefix
`TEACHER_` (`TEACHER_MAX_BATCH_TOKENS=8192`); the flag wins. `--help` names each variable.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROG = "python -m teacher_server"
HTTP_OFF = -1


def _port_or_off(value):
    return HTTP_OFF if isinstance(value, str) and value.strip().lower() == "off" else value


class ServerSettings(BaseSettings):
    """Teacher server options."""

    model_config = SettingsConfigDict(
        env_prefix="TEACHER_", cli_kebab_case=True, cli_prog_name=PROG,
        cli_implicit_flags=True, cli_show_env_vars=True, protected_namespaces=(),
    )

    model: str = Field(description="Hugging Face model directory or hub id")
    revision: str | None = Field(
        None, description="hub models: the branch, tag or commit of --model to load (pin it)")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="inference backend")
    # vllm backend only (the engine's other choices stay vLLM's own; --max-top-k sets its
    # max_logprobs, --max-context its max_model_len, --dtype its dtype; --device is not used)
    vllm_gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vllm: fraction of GPU memory the engine may take")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs the model is split over")
    vllm_enforce_eager: bool = Field(
        False, description="vllm: no torch.compile or CUDA graphs (starts faster, serves slower)")
    vllm_arg: dict[str, str] = Field(
        default_factory=dict,
        description="vllm: any other engine argument (vLLM's EngineArgs), repeated: "
                    "--vllm-arg max_num_seqs=64 --vllm-arg enable_prefix_caching=true; "
                    "values are converted to the argument's type (JSON for structured ones)")
    host: str = Field("127.0.0.1", description="interface to bind (0.0.0.0 for remote workers)")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    http_port: Annotated[int, BeforeValidator(_port_or_off)] = Field(
        8080, ge=HTTP_OFF, le=65535,
        description="health/metrics HTTP port (0 picks a free one; -1 or off: no HTTP server)")
    device: str = Field("auto", description="torch device: auto (cuda if present), cpu, cuda, cuda:1")
    device_map: str | None = Field(
        None, description="transformers: accelerate's device_map instead of --device; auto splits "
                          "a model too large for one GPU over every GPU (then CPU memory)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto: transformers float32 on CPU and bfloat16 on "
                           "GPU, vllm its own choice (bfloat16 for a float32 checkpoint)")
    max_batch_tokens: int = Field(
        8192, ge=1, description="token budget of one forward pass, padding included")
    max_wait_ms: float = Field(
        5.0, ge=0, description="longest a request waits for others to fill a batch")
    max_queued_tokens: int = Field(
        4_000_000, ge=1, description="tokens waiting beyond this are refused (RESOURCE_EXHAUSTED)")
    logits_chunk_tokens: int = Field(
        1024, ge=1, description="positions turned into logits at once: peak memory is this x vocab")
    max_top_k: int = Field(
        0, ge=0, description="largest top_k served (0: vocabulary size; vllm: 64, its max_logprobs)")
    max_context: int = Field(0, ge=0, description="longest sequence served (0: the model's)")
    max_draft_tokens: int = Field(16, ge=1, description="longest draft a Verify request may send")
    prefix_cache_mb: int = Field(
        1024, ge=0, description="transformers: memory for Verify sessions' KV caches, MiB (least recently "
                                "used evicted first; 0: no sessions, every round runs its whole sequence)")
    share_prefixes: bool = Field(
        True, description="transformers: sequences of one forward pass that share a start of 16+ tokens (samples "
                          "of one prompt) run it once (--no-share-prefixes: each runs all its tokens)")
    session_idle_s: float = Field(
        60.0, gt=0, description="a Verify session's cache is dropped after this many seconds without a round")
    max_message_mb: int = Field(256, ge=1, description="largest gRPC message, both ways, in MiB")
    num_threads: int = Field(
        0, ge=0, description="torch CPU threads (0: torch's default; 1 when sharing a small CPU)")
    grace_seconds: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests get to finish")
    trust_remote_code: bool = Field(
        False, description="run the model's own Python code (from its folder or hub repository)")
    max_forward_seconds: float = Field(
        300.0, ge=0, description="a forward pass running longer than this turns health "
                                 "NOT_SERVING (and /readyz 503) until it ends (0: no limit)")
    log_level: str = Field("INFO", description="logging level")
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line (time, level, logger, message, extras)")
    log_requests: bool = Field(
        False, description="log one line per finished rpc (tenant, rpc, sequences, tokens, status, "
                           "ms) on the logger teacher_server.requests")
    # sharing the teacher: tenants, transport security, per-request caps
    tenants: str | None = Field(
        None, description="tenants YAML (names, token hashes, weights, quotas; re-read on SIGHUP); "
                          "without it the server is open to anyone who can reach the port")
    tls_cert: str | None = Field(None, description="TLS certificate chain (PEM) for the gRPC port")
    tls_key: str | None = Field(None, description="TLS private key (PEM) for the gRPC port")
    tls_client_ca: str | None = Field(
        None, description="CA bundle (PEM): require client certificates signed by it (mutual TLS)")
    max_request_sequences: int = Field(
        4096, ge=1, description="sequences (Generate: prompts x samples) one request may carry")
    max_request_tokens: int = Field(
        1 << 20, ge=1, description="tokens one request may put through the model")
    max_metadata_kb: int = Field(16, ge=1, description="largest request metadata (headers), KiB")

    @model_validator(mode="after")
    def _tls_pair(self) -> "ServerSettings":
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        return self

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024


def parse_settings(argv: list[str] | None = None) -> ServerSettings:
    """Settings from the command line (`argv`, default sys.argv[1:]) and the environment; a
    missing or invalid option exits with a usage error naming its flag and variable."""
    try:
        return ServerSettings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            where = (f"--{name.replace('_', '-')} (or {ServerSettings.model_config['env_prefix']}"
                     f"{name.upper()}): " if name else "")
            lines.append(f"{PROG}: error: {where}{error['msg'].removeprefix('Value error, ')}")
        print("\n".join([*lines, f"see {PROG} --help"]), file=sys.stderr)
        sys.exit(2)   # argparse's status for a usage error
