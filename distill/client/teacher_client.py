"""Client of the teacher service (distill.v1.Teacher), blocking and asyncio.

    from distill.client.teacher_client import TeacherClient
    client = TeacherClient("teacher-host:50051", timeout=60)
    info = client.info()
    scores = client.score([[1, 5, 9, 2]], score_from=1, top_k=20)
    scores[0].topk_logprobs          # float32 [3, 20]
    samples = client.generate([[1, 5, 9]], num_samples=4, temperature=0.8, max_new_tokens=32)
    samples[0][3].token_ids          # int64 [L]: prompt 0's fourth sample
    [v] = client.verify([[1, 5, 9]], [[4, 7]], draft_probs=[q_2V], seed=0)  # q_2V: student's [2, V]
    v.num_accepted, v.next_token     # keep draft[:num_accepted], then append next_token

`target` is one address, several ("h1:50051,h2:50051" or a list) or a resolver name such as
"dns:///teachers.internal:50051". Over several replicas the blocking client sends each call to the
replica expected to answer first (`routing="least_work"`, distill.client.routing: the work in
flight there and its reported queue, at its recent pace); `routing="round_robin"` (and the asyncio
client) spread calls evenly with gRPC's `round_robin` policy. Calls that fail with UNAVAILABLE (a
replica draining or down) are retried with exponential backoff, on another replica when there is
one; calls refused with RESOURCE_EXHAUSTED (a queue or quota limit) are retried after the server's
retry hint. Every call has a deadline (`timeout` seconds).

A shared teacher wants a token (`api_key`, sent as `authorization: Bearer ...`) and TLS:
`tls_ca` (the CA that signed the server's certificate; `tls=True` trusts the system's CAs), and
for mutual TLS `tls_cert` + `tls_key` (this client's certificate and key), all PEM file paths.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Sequence

import grpc
import numpy as np
import torch

from distill.client.routing import LeastWorkRouter, dns_name, names_replicas
from distill.results import (VERIFY_MODES, TeacherSample, TeacherScores, TextScores, VerifyOutcome,  # noqa: F401
                             samples_from_proto, scores_from_packed, scores_from_proto, text_scores_from_response,
                             verify_from_proto, whole_scores_from_packed)
from distill.tensors import pack, wire_dtype
from distill.tls import channel_credentials
from distill.v1 import teacher_pb2 as pb
from distill.v1 import teacher_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Teacher"].full_name
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

TokenSeq = Sequence[int] | torch.Tensor | np.ndarray


def resolve_target(target: str | Sequence[str]) -> str:
    """One gRPC target for one or several addresses.

    gRPC's static resolver takes several addresses only as IP literals ("ipv4:1.2.3.4:50051,...");
    host names in a list are resolved here, once. For replicas that come and go, give one
    "dns:///name:port" target instead: gRPC re-resolves it.
    """
    parts = [t.strip() for t in (target.split(",") if isinstance(target, str) else target)]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("empty teacher target")
    if len(parts) == 1:
        return parts[0]
    addresses, families = [], set()
    for part in parts:
        host, _, port = part.rpartition(":")
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = ipaddress.ip_address(socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][4][0])
        families.add(ip.version)
        addresses.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    if len(families) > 1:
        raise ValueError(f"mixing IPv4 and IPv6 teacher addresses is not supported: {parts}")
    return f"ipv{families.pop()}:" + ",".join(addresses)


def channel_options(max_message_bytes: int, max_attempts: int, keepalive_s: float = 20.0,
                    retry_unavailable: bool = True) -> list[tuple[str, object]]:
    """Message limits, round-robin balancing, gRPC-native retries (max_attempts 1: none) and
    keepalive pings: a replica that stops answering (frozen, or its network gone) is found within
    about 1.5 x keepalive_s, and calls on it fail over to another replica instead of waiting for
    their deadline. retry_unavailable False: the channel of one replica under LeastWorkRouter,
    which moves such calls to another replica itself."""
    method = {"name": [{"service": SERVICE_NAME}]}
    if max_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": max_attempts,  # gRPC caps this at 5
            "initialBackoff": "0.2s", "maxBackoff": "5s", "backoffMultiplier": 2.0,
            # RESOURCE_EXHAUSTED carries the server's pushback (grpc-retry-pushback-ms): the
            # next attempt waits exactly that long, or never comes when it is negative
            "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"] if retry_unavailable
            else ["RESOURCE_EXHAUSTED"],
        }
    service_config = {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [method]}
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_s * 500)),
        ("grpc.http2.ping_timeout_ms", int(keepalive_s * 500)),  # core waits this (default 60 s)
        ("grpc.http2.max_pings_without_data", 0),   # ping during long calls too
        ("grpc.service_config", json.dumps(service_config)),
        # A request is only retried while it fits the retry buffer (default 256 KiB, smaller
        # than one scoring batch): size it to the largest message.
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ("grpc.retry_buffer_size", max_message_bytes),
    ]


def _ids(seq: TokenSeq) -> np.ndarray:
    if isinstance(seq, torch.Tensor):
        seq = seq.detach().cpu().numpy()
    array = np.asarray(seq)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"a token sequence must be a 1-D list of ints, got {array.dtype} {array.shape}")
    return array.astype(np.int32)


def _per_sequence(value, n: int, name: str) -> list:
    if isinstance(value, (int, np.integer)) or value is None:
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} sequences")
    return value


def score_request(sequences: Sequence[TokenSeq], score_from: int | Sequence[int], top_k: int,
                  temperature: float, candidates, dtype: str, packed: bool = True) -> pb.ScoreRequest:
    """A ScoreRequest in the packed form (one array per field for the whole request), or one
    message per sequence when `packed` is False or the candidate blocks differ in width (the
    packed form has one C for the request)."""
    request = pb.ScoreRequest(top_k=top_k, temperature=temperature, logprob_dtype=wire_dtype(dtype))
    starts = _per_sequence(score_from, len(sequences), "score_from")
    cands = None
    if candidates is not None:
        cands = _per_sequence(candidates, len(sequences), "candidates")
        cands = None if all(c is None for c in cands) else [np.asarray(c) if c is not None else c
                                                             for c in cands]
    if packed and (cands is None or (all(c is not None for c in cands)
                                     and len({c.shape[1:] for c in cands}) == 1)):
        ids, lengths = _packed_ids(sequences)
        request.packed.token_ids.CopyFrom(pack(ids))
        request.packed.lengths.CopyFrom(pack(lengths))
        request.packed.score_from.CopyFrom(pack(np.asarray(starts, dtype=np.int32)))
        if cands is not None:
            request.packed.candidate_ids.CopyFrom(pack(np.concatenate(cands), "int32"))
        return request
    for seq, start, cand in zip(sequences, starts, cands or [None] * len(sequences)):
        item = request.sequences.add(token_ids=pack(_ids(seq)), score_from=int(start))
        if cand is not None:
            item.candidate_ids.CopyFrom(pack(cand, "int32"))
    return request


def _packed_ids(sequences: Sequence[TokenSeq]) -> tuple[np.ndarray, np.ndarray]:
    """Every sequence's ids one after another (int32) and their lengths (int32 [B])."""
    if isinstance(sequences, (torch.Tensor, np.ndarray)) and sequences.ndim == 2:   # equal lengths
        array = sequences.detach().cpu().numpy() if isinstance(sequences, torch.Tensor) else sequences
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"token sequences must be ints, got {array.dtype}")
        return array.astype(np.int32).reshape(-1), np.full(array.shape[0], array.shape[1], np.int32)
    parts = [_ids(seq) for seq in sequences]
    lengths = np.fromiter(map(len, parts), np.int32, len(parts))
    return (np.concatenate(parts) if parts else np.zeros(0, np.int32)), lengths


def text_score_request(sequences: Sequence[dict], top_k: int, temperature: float, dtype: str) -> pb.ScoreRequest:
    """See TeacherClient.score_text."""
    request = pb.ScoreRequest(top_k=top_k, temperature=temperature, logprob_dtype=wire_dtype(dtype))
    for seq in sequences:
        unknown = set(seq) - {"messages", "prompt", "completion", "end_of_turn"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in a text sequence; expected messages or prompt, "
                             f"completion, end_of_turn")
        request.text.add(messages=[pb.ChatMessage(role=m["role"], content=m["content"])
                                   for m in seq.get("messages", ())],
                         prompt=seq.get("prompt", ""), completion=seq.get("completion", ""),
                         end_of_turn=bool(seq.get("end_of_turn", False)))
    return request


def scores_from_response(response: pb.ScoreResponse) -> list[TeacherScores]:
    """One TeacherScores per sequence, from either form of the answer."""
    if response.HasField("packed"):
        return scores_from_packed(response.packed, response.offsets)
    return [scores_from_proto(r) for r in response.results]


def whole_scores_from_response(response: pb.ScoreResponse) -> TeacherScores:
    """Every sequence's rows one after another, from either form of the answer (the packed one
    needs no per-sequence split)."""
    if response.HasField("packed"):
        return whole_scores_from_packed(response.packed, response.offsets)[0]
    return TeacherScores.concat([scores_from_proto(r) for r in response.results])


def verify_request(prefixes: Sequence[TokenSeq], drafts: Sequence[TokenSeq], draft_probs, mode: str,
                   top_k: int | None, temperature: float, seed: int | None, score_top_k: int | None,
                   dtype: str, session_keys: Sequence[str] | None = None,
                   end_sessions: Sequence[bool] | None = None) -> pb.VerifyRequest:
    """See TeacherClient.verify."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"unknown verify mode {mode!r}; expected one of {sorted(VERIFY_MODES)}")
    if mode == "topk" and top_k is None:
        raise ValueError('mode="topk" needs top_k (the K of "accept when in the teacher\'s top-K")')
    if len(drafts) != len(prefixes):
        raise ValueError(f"{len(drafts)} drafts for {len(prefixes)} prefixes")
    k = score_top_k if score_top_k is not None else (top_k if top_k is not None else 20)
    request = pb.VerifyRequest(mode=VERIFY_MODES[mode], temperature=temperature, seed=seed,
                               accept_top_k=top_k if mode == "topk" else 0, top_k=k,
                               logprob_dtype=wire_dtype(dtype))
    for i, (prefix, draft, probs) in enumerate(zip(prefixes, drafts, _per_sequence(draft_probs, len(prefixes),
                                                                                   "draft_probs"))):
        seq = request.sequences.add(prefix_ids=pack(_ids(prefix)), draft_ids=pack(_ids(draft)),
                                    session_key=session_keys[i] if session_keys else "",
                                    end_session=bool(end_sessions[i]) if end_sessions else False)
        if isinstance(probs, tuple):          # top-k form: (ids [γ, k], probs [γ, k])
            seq.draft_topk_ids.CopyFrom(pack(torch.as_tensor(probs[0]), "int32"))
            probs = probs[1]
        if probs is not None:
            seq.draft_probs.CopyFrom(pack(torch.as_tensor(probs), "float32"))
    return request


def generate_request(prompts: Sequence[TokenSeq], num_samples: int, temperature: float, top_p: float,
                     max_new_tokens: int, stop_token_ids: Sequence[int] | None, seed: int | None,
                     dtype: str, return_text: bool = False) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt_ids=[pack(_ids(p)) for p in prompts], num_samples=num_samples,
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        stop_token_ids=[int(t) for t in (stop_token_ids if stop_token_ids is not None else [])],
        seed=seed, logprob_dtype=wire_dtype(dtype), return_text=return_text)


ROUTINGS = ("least_work", "round_robin")


def _num_tokens(sequences) -> int:
    if isinstance(sequences, (torch.Tensor, np.ndarray)):
        return int(np.prod(sequences.shape))
    return sum(len(seq) for seq in sequences)


class _ClientBase:
    def __init__(self, target: str | Sequence[str], timeout: float = 60.0, api_key: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_attempts: int = 5,
                 keepalive_s: float = 20.0,
                 tls: bool = False, tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, routed: bool = False):
        """routed: LeastWorkRouter resolves the target's replicas itself; gRPC needs one target."""
        self.named_target = target if isinstance(target, str) else ",".join(target)
        self.target = self.named_target if routed else resolve_target(target)
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        self._limits = (max_message_bytes, max_attempts, keepalive_s)
        self._options = channel_options(*self._limits)
        self._credentials = channel_credentials(tls, tls_ca, tls_cert, tls_key)

    def _channel(self, grpc_module, target: str | None = None, options=None):
        """A channel on `grpc_module` (grpc or grpc.aio), TLS when credentials were given."""
        target, options = target or self.target, options or self._options
        if self._credentials is None:
            return grpc_module.insecure_channel(target, options=options)
        return grpc_module.secure_channel(target, self._credentials, options=options)

    def _replica_channel(self, address: str) -> grpc.Channel:
        """The channel to one replica under LeastWorkRouter: it alone, UNAVAILABLE not retried
        on it (the router tries another replica); TLS checks the certificate against the name
        the target gave, not the address it resolved to."""
        options = channel_options(*self._limits, retry_unavailable=False)
        if self._credentials is not None and self.named_target.startswith("dns:"):
            options.append(("grpc.ssl_target_name_override", dns_name(self.named_target)[0]))
        return self._channel(grpc, address, options)

    def _call_kwargs(self, timeout: float | None) -> dict:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self._metadata}


class TeacherClient(_ClientBase):
    """Blocking client. Thread-safe; one per process is enough."""

    def __init__(self, target, timeout: float = 60.0, api_key: str | None = None, routing: str = "least_work",
                 **kwargs):
        if routing not in ROUTINGS:
            raise ValueError(f"unknown routing {routing!r}; expected one of {ROUTINGS}")
        # one replica, or gRPC's round robin: one channel; several under least_work: the router's
        routed = routing == "least_work" and names_replicas(target if isinstance(target, str) else ",".join(target))
        super().__init__(target, timeout, api_key, routed=routed, **kwargs)
        self.router = None if not routed else LeastWorkRouter(
            self.named_target, self._replica_channel, pb_grpc.TeacherStub, self._limits[1])
        self.channel = self._channel(grpc) if self.router is None else None
        self.stub = pb_grpc.TeacherStub(self.channel) if self.router is None else None

    def _call(self, method: str, request, tokens: int, timeout: float | None, affinity: str | None = None):
        kwargs = self._call_kwargs(timeout)
        if self.router is None:
            return getattr(self.stub, method)(request, **kwargs)
        return self.router.call(method, request, tokens, kwargs["timeout"], kwargs["metadata"], affinity)

    def info(self, timeout: float | None = None) -> pb.InfoResponse:
        return self._call("Info", pb.InfoRequest(), 1, timeout)

    def score(self, sequences: Sequence[TokenSeq], score_from: int | Sequence[int], top_k: int = 20,
              temperature: float = 1.0, candidates=None, dtype: str = "float32",
              timeout: float | None = None) -> list[TeacherScores]:
        """Teacher log-probs of positions score_from .. T-1 of each sequence.

        `score_from` is one int for all sequences or one per sequence; `candidates` is None or
        one int [N_i, C] id block (or None) per sequence; `dtype` is the wire precision of the
        log-probs ("float32" or "float16"; results are float32 tensors either way).
        """
        request = score_request(sequences, score_from, top_k, temperature, candidates, dtype)
        response = self._call("Score", request, _num_tokens(sequences), timeout)
        return scores_from_response(response)

    def score_text(self, sequences: Sequence[dict], top_k: int = 20, temperature: float = 1.0,
                   dtype: str = "float32", timeout: float | None = None) -> list[TextScores]:
        """Score's text form, for a caller whose tokenizer is not the teacher's: each sequence a
        dict with the prompt as "messages" (chat messages, rendered by the teacher's own chat
        template) or "prompt" (plain text), the "completion" text, and optionally "end_of_turn"
        (also score the teacher's end of turn after it). The teacher tokenizes; each answer holds
        its scores per teacher token, the tokens and their character spans in the completion."""
        request = text_score_request(sequences, top_k, temperature, dtype)
        tokens = sum(len(s.get("completion", "")) + len(s.get("prompt", "")) for s in sequences)
        return text_scores_from_response(self._call("Score", request, tokens, timeout))

    def score_packed(self, sequences: Sequence[TokenSeq], score_from: int | Sequence[int], top_k: int = 20,
                     temperature: float = 1.0, candidates=None, dtype: str = "float32",
                     timeout: float | None = None) -> TeacherScores:
        """`score` with the answer kept whole: one TeacherScores holding every sequence's rows
        one after another (sequence i has len(sequences[i]) - score_from[i] of them), as the
        training batch wants it; saves splitting into B small tensors and concatenating back."""
        request = score_request(sequences, score_from, top_k, temperature, candidates, dtype)
        response = self._call("Score", request, _num_tokens(sequences), timeout)
        return whole_scores_from_response(response)

    def generate(self, prompts: Sequence[TokenSeq], num_samples: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 64,
                 stop_token_ids: Sequence[int] | None = None, seed: int | None = None,
                 dtype: str = "float32", return_text: bool = False,
                 timeout: float | None = None) -> list[list[TeacherSample]]:
        """`num_samples` teacher samples per prompt: result[i][j] is prompt i's sample j.

        temperature 0 is greedy; `stop_token_ids` None means the model's end-of-sequence ids; the
        same `seed` gives the same samples (None: random). `dtype` is the wire precision of the
        log-probs, as in `score`. `return_text`: each sample's `text` too (decoded by the teacher,
        for a caller with another tokenizer).
        """
        request = generate_request(prompts, num_samples, temperature, top_p, max_new_tokens,
                                   stop_token_ids, seed, dtype, return_text)
        tokens = num_samples * (_num_tokens(prompts) + len(prompts) * max_new_tokens)
        response = self._call("Generate", request, tokens, timeout)
        return samples_from_proto(response, len(prompts))

    def verify(self, prefixes: Sequence[TokenSeq], drafts: Sequence[TokenSeq], draft_probs=None,
               mode: str = "speculative", top_k: int | None = None, temperature: float = 1.0,
               seed: int | None = None, score_top_k: int | None = None, dtype: str = "float32",
               session_keys: Sequence[str] | None = None, end_sessions: Sequence[bool] | None = None,
               timeout: float | None = None) -> list[VerifyOutcome]:
        """The teacher's accept/reject of each prefix's draft of γ tokens.

        mode "speculative" (exact speculative sampling) needs `draft_probs`: one student
        distribution per sequence, a float [γ, V] tensor, or an (ids, probs) pair of [γ, k]
        tensors (the rest of each row's mass is taken as spread evenly over the other ids).
        mode "topk" keeps drafts among the teacher's `top_k` most likely tokens; "greedy" keeps
        drafts equal to its argmax; both ignore draft_probs. The returned scores have k =
        `score_top_k`, else `top_k`, else 20. The same `seed` gives the same outcome.
        `session_keys` (one per sequence) let a teacher with Features.verify_sessions keep each
        sequence's cache between rounds, so the next round runs only its new tokens; the answer is
        the same with or without them. `end_sessions` marks the rounds after which a key is done.
        """
        request = verify_request(prefixes, drafts, draft_probs, mode, top_k, temperature, seed,
                                 score_top_k, dtype, session_keys, end_sessions)
        response = self._call("Verify", request, _num_tokens(prefixes) + _num_tokens(drafts), timeout,
                              affinity=session_keys[0] if session_keys else None)
        return [verify_from_proto(r) for r in response.results]

    def close(self) -> None:
        for channel in [self.channel] if self.router is None else [r.channel for r in self.router.replicas]:
            channel.close()

    def __enter__(self) -> "TeacherClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncTeacherClient(_ClientBase):
    """asyncio twin of TeacherClient (grpc.aio); create it inside the running event loop."""

    def __init__(self, target, timeout: float = 60.0, api_key: str | None = None, **kwargs):
        super().__init__(target, timeout, api_key, **kwargs)
        self.channel = self._channel(grpc.aio)
        self.stub = pb_grpc.TeacherStub(self.channel)

    async def info(self, timeout: float | None = None) -> pb.InfoResponse:
        return await self.stub.Info(pb.InfoRequest(), **self._call_kwargs(timeout))

    async def score(self, sequences: Sequence[TokenSeq], score_from: int | Sequence[int],
                    top_k: int = 20, temperature: float = 1.0, candidates=None,
                    dtype: str = "float32", timeout: float | None = None) -> list[TeacherScores]:
        """See TeacherClient.score."""
        request = score_request(sequences, score_from, top_k, temperature, candidates, dtype)
        response = await self.stub.Score(request, **self._call_kwargs(timeout))
        return scores_from_response(response)

    async def generate(self, prompts: Sequence[TokenSeq], num_samples: int = 1,
                       temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64,
                       stop_token_ids: Sequence[int] | None = None, seed: int | None = None,
                       dtype: str = "float32",
                       timeout: float | None = None) -> list[list[TeacherSample]]:
        """See TeacherClient.generate."""
        request = generate_request(prompts, num_samples, temperature, top_p, max_new_tokens,
                                   stop_token_ids, seed, dtype)
        response = await self.stub.Generate(request, **self._call_kwargs(timeout))
        return samples_from_proto(response, len(prompts))

    async def verify(self, prefixes: Sequence[TokenSeq], drafts: Sequence[TokenSeq],
                     draft_probs=None, mode: str = "speculative", top_k: int | None = None,
                     temperature: float = 1.0, seed: int | None = None,
                     score_top_k: int | None = None, dtype: str = "float32",
                     session_keys: Sequence[str] | None = None, end_sessions: Sequence[bool] | None = None,
                     timeout: float | None = None) -> list[VerifyOutcome]:
        """See TeacherClient.verify."""
        request = verify_request(prefixes, drafts, draft_probs, mode, top_k, temperature, seed,
                                 score_top_k, dtype, session_keys, end_sessions)
        response = await self.stub.Verify(request, **self._call_kwargs(timeout))
        return [verify_from_proto(r) for r in response.results]

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncTeacherClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
