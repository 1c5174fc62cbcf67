"""Padded embedding rows in vLLM: the `logit_bias` that keeps ids at or beyond the tokenizer's
size from being drawn. The teacher's vllm backend and the student's vllm sampler both use it,
so it lives with the contract's shared code; importing it needs no vLLM.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


def padded_ids_bias(real_vocab: int | None, rows: int, limit: int | None = None) -> dict[int, float] | None:
    """{id: -inf} for every padded id (real_vocab <= id < rows), the `logit_bias` that masks them;
    None when there are none. Build it once and pass the same dict with every request (vLLM
    copies a request's options; nothing changes it).

    Why logit_bias and not `allowed_token_ids=range(real_vocab)`: vLLM 0.32's V2 model runner (its
    default on GPUs with Triton) refuses more than MAX_NUM_ALLOWED_TOKEN_IDS = 1,024 allowed ids
    (vllm/v1/worker/gpu/sample/logit_bias.py), and on the V1 runner the whole-tokenizer list costs
    ~60 ms of CPU per request (built, deep-copied, validated, then scattered into a [V] mask row).
    A model pads a few hundred rows (Qwen2.5: 271 or 399), well inside the V2 runner's
    MAX_NUM_LOGIT_BIAS_TOKENS = 1,024. Both runners add the bias to the logits before
    temperature, top-p and the `processed_logprobs` (V1: v1/sample/sampler.py
    `apply_logits_processors`; V2: v1/worker/gpu/sample/sampler.py, `LogitBiasState` first of
    its logits processors), so padded ids carry no probability in the reported log-probs either.

    limit: the most entries the engine takes (`logit_bias_limit`; None: no limit). With more
    padded ids than that, nothing is masked (a warning says so): padded ids of a trained model
    get almost no mass, and the student's loss already tolerates a padded target.
    """
    if real_vocab is None or real_vocab >= rows:
        return None
    if limit is not None and rows - real_vocab > limit:
        log.warning("%d padded embedding rows (ids %d..%d) exceed the %d logit_bias entries vLLM's "
                    "V2 model runner takes: padded ids are not masked in sampling",
                    rows - real_vocab, real_vocab, rows - 1, limit)
        return None
    return dict.fromkeys(range(real_vocab, rows), -math.inf)


def logit_bias_limit(llm) -> int | None:
    """The most `logit_bias` entries one request may carry on this engine (a vLLM `LLM`): the V2
    model runner keeps them in fixed [max_num_reqs, MAX_NUM_LOGIT_BIAS_TOKENS] buffers and
    refuses more; the V1 runner (the CPU build, where Triton has no backend) has no limit."""
    if not llm.llm_engine.vllm_config.use_v2_model_runner:
        return None
    from vllm.v1.worker.gpu.sample.logit_bias import MAX_NUM_LOGIT_BIAS_TOKENS

    return MAX_NUM_LOGIT_BIAS_TOKENS
