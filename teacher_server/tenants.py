"""Tenants: who may call the teacher, their share of it and their quotas (`--tenants FILE`).

The file is YAML an operator writes by hand:

    tenants:
      - name: team-a
        token_sha256: 9f86d08...   # sha256 of the bearer token, hex (the token itself is never stored)
        weight: 2                  # share of the forward passes when tenants compete
        tokens_per_minute: 2000000 # tokens run through the model per minute (0: no limit)
        max_queued_tokens: 200000  # tokens waiting at once (0: only the server's limit)
        rpcs: [Score, Verify, Generate, Info]

Clients send `authorization: Bearer <token>`. The file is read again on SIGHUP: a token removed
from it is refused from then on, and a tenant keeps its rate-limit state across reloads.
Without a file the server is open: every caller is the tenant "open", with no limits of its own.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from teacher_server.errors import Overloaded, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

RPCS = ("Score", "Verify", "Generate", "Info")
OPEN = "open"


class TenantSpec(BaseModel):
    """One entry of the tenants file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    token_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    weight: float = Field(1.0, gt=0, le=1e6)
    tokens_per_minute: int = Field(0, ge=0)
    max_queued_tokens: int = Field(0, ge=0)
    rpcs: tuple[Literal["Score", "Verify", "Generate", "Info"], ...] = RPCS

    @field_validator("token_sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: list[TenantSpec] = Field(min_length=1)

    @field_validator("tenants")
    @classmethod
    def _unique(cls, tenants: list[TenantSpec]) -> list[TenantSpec]:
        for attr in ("name", "token_sha256"):
            values = [getattr(t, attr) for t in tenants]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"duplicate {attr}: {', '.join(d[:16] for d in dupes)}")
        return tenants


class Tenant:
    """A tenant at run time: its spec plus a token bucket for `tokens_per_minute`.

    The bucket holds up to one minute of tokens and refills continuously, so a tenant may burst
    up to its per-minute quota and then runs at its rate.
    """

    def __init__(self, spec: TenantSpec):
        self.spec = spec
        self._level = float(spec.tokens_per_minute)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    name = property(lambda self: self.spec.name)
    weight = property(lambda self: self.spec.weight)
    max_queued_tokens = property(lambda self: self.spec.max_queued_tokens)

    def charge(self, tokens: int) -> None:
        """Take `tokens` from the bucket, or raise Overloaded saying when they will be there."""
        rate = self.spec.tokens_per_minute
        if not rate:    # (a request over the whole quota was refused as invalid: protocol.py)
            return
        with self._lock:
            now = time.monotonic()
            self._level = min(rate, self._level + (now - self._stamp) * rate / 60)
            self._stamp = now
            if tokens > self._level:
                wait = (tokens - self._level) * 60 / rate
                raise Overloaded(f"tenant {self.name!r} is over its quota of {rate} tokens per "
                                 f"minute; retry in {wait:.2f} s", retry_after_s=wait,
                                 reason="rate")
            self._level -= tokens

    def reconfigure(self, spec: TenantSpec) -> None:
        with self._lock:
            self._level = min(self._level, spec.tokens_per_minute)
            self.spec = spec


def _bearer(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            value = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = value.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


class Tenants:
    """Authenticates callers. `Tenants(None)` is the open server."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._by_hash: dict[str, Tenant] = {}
        self._by_name: dict[str, Tenant] = {}
        if self.open:
            self._by_name[OPEN] = Tenant(TenantSpec(name=OPEN, token_sha256="0" * 64))
        else:
            self.reload()

    @property
    def open(self) -> bool:
        """No tenants file: anyone may call."""
        return self.path is None

    def reload(self) -> None:
        """Read the file again (at start, and on SIGHUP). A bad file at start stops the server;
        a bad file on reload is logged and the previous tenants stay in force."""
        try:
            parsed = TenantsFile.model_validate(yaml.safe_load(self.path.read_text()))
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise ValueError(f"cannot use the tenants file {self.path}: {exc}") from exc
        by_name = {}
        for spec in parsed.tenants:
            tenant = self._by_name.get(spec.name) or Tenant(spec)
            tenant.reconfigure(spec)
            by_name[spec.name] = tenant
        self._by_name = by_name
        self._by_hash = {t.spec.token_sha256: t for t in by_name.values()}
        log.info("tenants: %s", ", ".join(f"{t.name} (weight {t.weight:g})" for t in by_name.values()))

    def authenticate(self, metadata, rpc: str) -> Tenant:
        """The calling tenant, or Unauthenticated / PermissionDenied."""
        if self.open:
            return self._by_name[OPEN]
        token = _bearer(metadata)
        if not token:
            raise Unauthenticated("this teacher needs a token: send the metadata "
                                  "'authorization: Bearer <token>' (the client's api_key)")
        digest = hashlib.sha256(token.encode()).hexdigest()
        tenant = self._by_hash.get(digest)
        if tenant is None:
            raise Unauthenticated("unknown or revoked token; ask the teacher's operator for one")
        if rpc not in tenant.spec.rpcs:
            raise PermissionDenied(f"tenant {tenant.name!r} may not call {rpc}; it may call "
                                   f"{', '.join(tenant.spec.rpcs)}")
        return tenant
