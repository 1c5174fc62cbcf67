"""Server settings: one pydantic-settings model, read from the command line and the environment.

Every option is a flag (`--max-batch-tokens 8192`) and an environment variable with the prefix
`TEACHER_` (`TEACHER_MAX_BATCH_TOKENS=8192`); the flag wins.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    """Teacher server options."""

    model_config = SettingsConfigDict(
        env_prefix="TEACHER_", cli_kebab_case=True, cli_prog_name="python -m teacher_server",
        cli_implicit_flags=True, protected_namespaces=(),
    )

    model: str = Field(description="Hugging Face model directory or hub id")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="inference backend")
    # vllm backend only (the engine's other choices stay vLLM's own; --max-top-k sets its
    # max_logprobs, --max-context its max_model_len, --dtype its dtype; --device is not used)
    vllm_gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vllm: fraction of GPU memory the engine may take")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs the model is split over")
    vllm_enforce_eager: bool = Field(
        False, description="vllm: no torch.compile or CUDA graphs (starts faster, serves slower)")
    host: str = Field("127.0.0.1", description="interface to bind (0.0.0.0 for remote workers)")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    http_port: int = Field(8080, ge=0, le=65535, description="health/metrics HTTP port (0: off)")
    device: str = Field("auto", description="torch device: auto (cuda if present), cpu, cuda, cuda:1")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto is float32 on CPU and bfloat16 on GPU")
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
    max_message_mb: int = Field(256, ge=1, description="largest gRPC message, both ways, in MiB")
    num_threads: int = Field(
        0, ge=0, description="torch CPU threads (0: torch's default; 1 when sharing a small CPU)")
    grace_seconds: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests get to finish")
    trust_remote_code: bool = Field(False, description="allow model code from the model folder")
    log_level: str = Field("INFO", description="logging level")
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
