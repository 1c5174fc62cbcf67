"""The reference backend: a Hugging Face `transformers` causal LM on CPU or GPU."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, GenerationConfig, LogitsProcessorList
from transformers.cache_utils import DynamicLayer

from distill.results import TeacherSample, TeacherScores, VerifyOutcome
from teacher_server.backends import ModelInfo, tokenizer_fields
from teacher_server.config import ServerSettings
from teacher_server.generation import ChosenLogprobs, GenerateItem, MaskPadded, cut_at_stop
from teacher_server.prefixes import shared_prefix_groups
from teacher_server.scoring import ScoreItem, mask_padded, score_logits
from teacher_server.sessions import KV, SessionCache
from teacher_server.verify import VerifyItem, verify_draft

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformersBackend:
    """Runs the model's decoder once per batch, then the LM head only on scored positions.

    Calling the full model would materialise logits for every position of every sequence
    ([B, L, V] floats: 8 x 4096 x 150k x 4 bytes = 20 GB). Instead the decoder gives hidden
    states [B, L, H], and the LM head runs on the scored rows in chunks of `chunk_tokens`, so the
    logits in memory are at most chunk_tokens x V.
    """

    def __init__(self, model, tokenizer, model_id: str, chunk_tokens: int = 1024,
                 max_context: int = 0, prefix_cache_mb: int = 0, session_idle_s: float = 60.0,
                 share_prefixes: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        # inputs go where the embedding is (with a device_map, the first layers' device)
        self.device = model.get_input_embeddings().weight.device
        self.cuda_devices = sorted({p.device for p in model.parameters() if p.device.type == "cuda"},
                                   key=str)
        self.chunk_tokens = chunk_tokens
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        config = model.config
        model_context = getattr(config, "max_position_embeddings", None) or 1 << 20
        self.info = ModelInfo(
            model_id=model_id, backend="transformers", vocab_size=self.lm_head.out_features,
            max_context=min(max_context or model_context, model_context),
            model_dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            **tokenizer_fields(tokenizer, getattr(model.generation_config, "eos_token_id", None)),
        )
        self.pad_id = max(self.info.pad, 0)
        self.share_prefixes = share_prefixes   # Score: a start several sequences share runs once
        self.metrics = None                    # teacher_server.metrics.Metrics, set by the server
        # Verify sessions need a cache of plain attention layers (one that can be cut back to a
        # shorter prefix: not sliding windows, not recurrent state)
        self.sessions = None
        if prefix_cache_mb and all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers):
            self.sessions = SessionCache(prefix_cache_mb << 20, session_idle_s)
            self.info.features = dataclasses.replace(self.info.features, verify_sessions=True)
        elif prefix_cache_mb:
            log.info("Verify sessions are off: %s's cache cannot be cut back to a prefix", model_id)
        # `model.generate` fills every option a call leaves unset from the checkpoint's
        # generation_config.json (top_k, repetition_penalty, min_length, ...): a neutral config
        # makes Generate sample exactly what the request asks for.
        model.generation_config = GenerationConfig(
            bos_token_id=self.info.bos if self.info.bos >= 0 else None,
            eos_token_id=self.info.eos_ids or None, pad_token_id=self.pad_id)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> "TransformersBackend":
        device = settings.device
        if device == "auto" or settings.device_map:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = settings.dtype
        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "bfloat16"
        where = f"device_map={settings.device_map}" if settings.device_map else device
        log.info("loading %s on %s in %s", settings.model, where, dtype)
        hub = dict(revision=settings.revision, trust_remote_code=settings.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(settings.model, **hub)
        if settings.device_map:
            # accelerate places the layers and moves activations between devices with hooks
            model = AutoModelForCausalLM.from_pretrained(
                settings.model, dtype=_DTYPES[dtype], device_map=settings.device_map, **hub)
            log.info("layers placed: %s", getattr(model, "hf_device_map", {}))
        else:
            model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=_DTYPES[dtype],
                                                         **hub).to(device)
        return cls(model, tokenizer, settings.model, settings.logits_chunk_tokens,
                   settings.max_context, settings.prefix_cache_mb, settings.session_idle_s,
                   settings.share_prefixes)

    def _logits(self, hidden_NH: torch.Tensor) -> torch.Tensor:
        """The LM head plus the output transforms some architectures apply after it."""
        logits = self.lm_head(hidden_NH)
        config = self.model.config
        if getattr(config, "logit_scale", None):          # Cohere
            logits = logits * config.logit_scale
        if getattr(config, "logits_scaling", None):       # Granite
            logits = logits / config.logits_scaling
        cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.inference_mode()
    def hidden_states(self, input_ids_BL: torch.Tensor, lengths_B: torch.Tensor) -> torch.Tensor:
        """Decoder outputs [B, L, H] for right-padded sequences of lengths_B tokens."""
        return self._decode(input_ids_BL, lengths_B).last_hidden_state

    def _decode(self, input_ids_BL: torch.Tensor, lengths_B: torch.Tensor, use_cache: bool = False):
        """The decoder over right-padded sequences of lengths_B tokens. Right padding keeps every
        real position's output (and keys and values) independent of its batch-mates (attention is
        causal)."""
        mask_BL = (torch.arange(input_ids_BL.shape[1]) < lengths_B[:, None]).long()
        return self.decoder(input_ids=input_ids_BL.to(self.device), attention_mask=mask_BL.to(self.device),
                            use_cache=use_cache)

    @torch.inference_mode()
    def score(self, items: list[ScoreItem | VerifyItem]) -> list[TeacherScores | VerifyOutcome]:
        """One decoder pass over every sequence of every item. Verify items settle their drafts
        and are scored from the logits of their G + 1 rows (see `_verified`), the last row's
        target being the verdict's next token. Every Score sequence is a block of hidden rows with
        target tokens (hidden at t-1 predicts token t) at its positions score_from .. T-1; items
        asking for the same (k, temperature, candidates?) share LM-head chunks; their blocks are
        gathered, and their results cut, with one tensor operation per group, not per sequence."""
        spans = [(item.lengths, item.score_from) if isinstance(item, ScoreItem)
                 else (torch.tensor([item.num_tokens]), torch.tensor([item.prefix.numel()]))
                 for item in items]
        lengths_B = torch.cat([lengths for lengths, _ in spans])
        first_row = [0, *itertools.accumulate(lengths.numel() for lengths, _ in spans)]
        input_ids_BL = pad_packed(torch.cat([item.token_ids for item in items]), lengths_B,
                                  self.pad_id)
        if self.sessions is not None:
            self.sessions.expire()     # every pass, so idle caches go even when no Verify comes
        keyed = {i: item for i, item in enumerate(items)
                 if self.sessions is not None and isinstance(item, VerifyItem) and item.session_key}
        groups = self._shared_starts(items, first_row, input_ids_BL, lengths_B) if self.share_prefixes else []
        caches = {}
        if keyed or groups:
            hidden_BLH, caches = self._hidden_reusing(input_ids_BL, lengths_B,
                                                      {first_row[i]: item for i, item in keyed.items()}, groups)
        else:
            hidden_BLH = self.hidden_states(input_ids_BL, lengths_B)
        outputs = self._verified(items, first_row, hidden_BLH)
        for i, item in keyed.items():
            self._keep_session(item, caches[first_row[i]], outputs[i])
        first_B = torch.cat([starts for _, starts in spans])
        sizes_B = lengths_B - first_B       # scored rows per sequence
        rows_before = [0, *sizes_B.cumsum(0).tolist()]   # of sequence b, in batch order
        cands_of = lambda i: items[i].candidate_ids
        key = lambda i: (items[i].top_k, items[i].temperature, cands_of(i) is not None)
        scored = [i for i, item in enumerate(items) if isinstance(item, ScoreItem)]
        for (top_k, temperature, _), group in itertools.groupby(sorted(scored, key=key), key):
            group = list(group)
            seq_S = (torch.arange(first_row[-1]) if len(group) == len(items) else  # all, in order
                     torch.cat([torch.arange(first_row[i], first_row[i + 1]) for i in group]))
            sizes_S = sizes_B[seq_S]
            row_N = seq_S.repeat_interleave(sizes_S)
            # position of row n (of sequence s): first[s] + (n - where s's block starts in the group)
            starts_S = first_B[seq_S] - (sizes_S.cumsum(0) - sizes_S)
            pos_N = torch.arange(row_N.numel()) + starts_S.repeat_interleave(sizes_S)
            rows_NH = hidden_BLH[row_N.to(hidden_BLH.device), (pos_N - 1).to(hidden_BLH.device)]
            targets_N = input_ids_BL[row_N, pos_N]
            cands = [cands_of(i) for i in group]
            cand_NC = None if cands[0] is None else _cat_ragged(cands)
            parts = []
            for start in range(0, rows_NH.shape[0], self.chunk_tokens):
                sl = slice(start, start + self.chunk_tokens)
                parts.append(score_logits(
                    self._logits(rows_NH[sl]), targets_N[sl], top_k, temperature,
                    None if cand_NC is None else cand_NC[sl], self.info.real_vocab))
            item_rows = [rows_before[first_row[i + 1]] - rows_before[first_row[i]] for i in group]
            for i, scores in zip(group, TeacherScores.concat(parts).split(item_rows)):
                if cands_of(i) is not None and cands_of(i).shape[1] < cand_NC.shape[1]:
                    scores.candidate_logprobs = scores.candidate_logprobs[:, :cands_of(i).shape[1]]
                outputs[i] = scores
        return outputs

    @staticmethod
    def _shared_starts(items, first_row: list[int], input_ids_BL, lengths_B) -> list[tuple[str, int, list[int]]]:
        """shared_prefix_groups over the Score sequences of the batch (as batch rows), tenant by
        tenant: a start is never shared between tenants, so no one can time another's prompts."""
        rows_of: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            if isinstance(item, ScoreItem):
                rows_of.setdefault(item.tenant, []).extend(range(first_row[i], first_row[i + 1]))
        return [(tenant, shared, [rows[m] for m in members]) for tenant, rows in rows_of.items() if len(rows) > 1
                for shared, members in shared_prefix_groups([input_ids_BL[r, :int(lengths_B[r])] for r in rows])]

    @torch.inference_mode()
    def _hidden_reusing(self, input_ids_BL: torch.Tensor, lengths_B: torch.Tensor, keyed: dict[int, VerifyItem],
                        groups: list[tuple[str, int, list[int]]]) -> tuple[torch.Tensor, dict[int, KV]]:
        """hidden_states for a batch where work can be reused, and the keys and values of every
        row in `keyed` (Verify rounds of sessions, by row) after the pass:
        - a session row with r reusable tokens runs only the rest on its cache;
        - a group of one tenant's rows sharing their first `shared` tokens (shared_prefix_groups)
          runs that start once, then every member's rest on top of it, in one batch;
        - the other rows run as one batch, keeping their caches when they have a key.
        Hidden rows a row did not run (before r) stay zero: no scored position reads them."""
        B, L = input_ids_BL.shape
        reused = {row: self.sessions.take(item.tenant, item.session_key, item.token_ids, item.prefix.numel() - 1)
                  for row, item in keyed.items()}
        grouped = {row for _, _, members in groups for row in members}
        full = [row for row in range(B) if reused.get(row, (0, None))[0] == 0 and row not in grouped]
        # where the decoder's output and the LM head are (with a device_map, the last layers' device)
        out_device = self.lm_head.weight.device
        hidden_BLH = torch.zeros(B, L, self.model.config.hidden_size, device=out_device,
                                 dtype=next(self.model.parameters()).dtype)
        caches = {}
        if full:
            rows = torch.tensor(full)
            width = int(lengths_B[rows].max())
            out = self._decode(input_ids_BL[rows, :width], lengths_B[rows], use_cache=any(r in keyed for r in full))
            hidden_BLH[rows.to(out_device), :width] = out.last_hidden_state.to(out_device)
            for j, row in enumerate(full):
                if row in keyed:      # right padding: row j's first lengths[row] positions are its own
                    n = int(lengths_B[row])
                    caches[row] = [(layer.keys[j:j + 1, :, :n].clone(), layer.values[j:j + 1, :, :n].clone())
                                   for layer in out.past_key_values.layers]
        for row, (start, kv) in reused.items():
            if start:
                n = int(lengths_B[row])
                out = self.decoder(input_ids=input_ids_BL[row:row + 1, start:n].to(self.device),
                                   past_key_values=DynamicCache(kv), use_cache=True)
                hidden_BLH[row, start:n] = out.last_hidden_state[0].to(out_device)
                caches[row] = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        for tenant, shared, members in groups:
            rows = torch.tensor(members)
            start = self.decoder(input_ids=input_ids_BL[members[0]:members[0] + 1, :shared].to(self.device),
                                 use_cache=True)
            hidden_BLH[rows.to(out_device), :shared] = start.last_hidden_state.to(out_device)
            rest_R = lengths_B[rows] - shared
            width = int(rest_R.max())
            mask_RW = torch.cat([torch.ones(len(members), shared, dtype=torch.long),
                                 (torch.arange(width) < rest_R[:, None]).long()], 1)
            kv = [(layer.keys.expand(len(members), -1, -1, -1), layer.values.expand(len(members), -1, -1, -1))
                  for layer in start.past_key_values.layers]
            out = self.decoder(input_ids=input_ids_BL[rows, shared:shared + width].to(self.device),
                               attention_mask=mask_RW.to(self.device), past_key_values=DynamicCache(kv),
                               use_cache=True)
            hidden_BLH[rows.to(out_device), shared:shared + width] = out.last_hidden_state.to(out_device)
            if self.metrics is not None:
                self.metrics.shared_prefix_tokens.labels(tenant=tenant).inc(shared * (len(members) - 1))
        return hidden_BLH, caches

    def _keep_session(self, item: VerifyItem, kv: KV, outcome: VerifyOutcome) -> None:
        """Keep the round's cache for the next round, unless the session ended: the caller said
        so, or the tokens the round kept (accepted drafts and the next token) reached an
        end-of-sequence token."""
        kept = [*item.draft[:outcome.num_accepted].tolist(), outcome.next_token]
        if not item.end_session and not set(kept) & set(self.info.eos_ids):
            self.sessions.put(item.tenant, item.session_key, item.token_ids, kv)

    def _verified(self, items, first_row: list[int], hidden_BLH) -> list[VerifyOutcome | None]:
        """Every Verify item's outcome (None for the other items). Item i's sequence is row
        first_row[i] of the batch.

        Hidden states at P-1 .. P+G-1 predict tokens P .. P+G: the G draft tokens and the one
        after the draft, which is why prefix + draft (P + G tokens) is all the decoder needs.
        The LM head runs once over all drafts' rows, and those logits serve both the decisions
        (per item, each with its own seeded CPU generator: the same draws on any device, whatever
        the batch) and the returned scores, whose last row's target is the verdict's next token.
        """
        outputs: list = [None] * len(items)
        index = [i for i, item in enumerate(items) if isinstance(item, VerifyItem)]
        if not index:
            return outputs
        spans = [(items[i].prefix.numel(), items[i].draft.numel()) for i in index]
        logits_RV = mask_padded(self._logits(torch.cat([hidden_BLH[first_row[i], P - 1:P + G]
                                                        for i, (P, G) in zip(index, spans)])),
                                self.info.real_vocab)
        logits_of, targets_of, verdicts = {}, {}, {}
        for i, logits_GV1 in zip(index, logits_RV.split([G + 1 for _, G in spans])):
            item = items[i]
            p_GV1 = torch.softmax(logits_GV1.float() / item.temperature, dim=-1).cpu()
            generator = torch.Generator().manual_seed(item.seed)
            verdicts[i] = verify_draft(p_GV1, item.draft_probs, item.draft, item.mode,
                                       item.accept_top_k, generator)
            logits_of[i] = logits_GV1
            targets_of[i] = torch.cat([item.draft, torch.tensor([verdicts[i][1]])])
        key = lambda i: (items[i].top_k, items[i].temperature)
        for (top_k, temperature), group in itertools.groupby(sorted(index, key=key), key):
            group = list(group)   # all of them, in order, in the usual case: their logits as they are
            logits_NV = logits_RV if len(group) == len(index) else torch.cat([logits_of[i] for i in group])
            scores = score_logits(logits_NV, torch.cat([targets_of[i] for i in group]).to(logits_RV.device),
                                  top_k, temperature)   # already masked: real_vocab applied above
            for i, part in zip(group, scores.split([targets_of[i].numel() for i in group])):
                outputs[i] = VerifyOutcome(*verdicts[i], part)
        return outputs

    @torch.inference_mode()
    def generate(self, items: list[GenerateItem]) -> list[list[list[TeacherSample]]]:
        """Unseeded items with equal options share one `model.generate` call; a seeded item runs
        alone on a forked, seeded RNG, so its samples depend on its seed only (not on its
        batch-mates) and the server's global RNG stream is left as it was."""
        groups: dict[object, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.options if item.seed is None else i, []).append(i)
        outputs: list[list[TeacherSample] | None] = [None] * len(items)
        for group in groups.values():
            batch = [items[i] for i in group]
            if batch[0].seed is None:
                results = self._generate(batch)
            else:
                with torch.random.fork_rng(devices=self.cuda_devices):
                    torch.manual_seed(batch[0].seed)
                    results = self._generate(batch)
            for i, samples in zip(group, results):
                outputs[i] = samples
        return outputs

    def _generate(self, batch: list[GenerateItem]) -> list[list[list[TeacherSample]]]:
        """One `model.generate` call for items sharing options: every prompt repeated
        num_samples times, left-padded (new tokens are appended on the right, so the prompts'
        last tokens must line up) with an attention mask that hides the padding."""
        first = batch[0]
        stop_ids = first.stop_ids or self.info.eos_ids
        prompts = [p for item in batch for p in item.prompts for _ in range(item.num_samples)]
        width = max(p.numel() for p in prompts)
        ids_BP = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask_BP = torch.zeros_like(ids_BP)
        for row, prompt in enumerate(prompts):
            ids_BP[row, width - prompt.numel():] = prompt
            mask_BP[row, width - prompt.numel():] = 1
        sampling = first.temperature > 0
        # top_k=0 switches off transformers' default top-50 truncation, which the contract lacks
        options = (dict(do_sample=True, temperature=first.temperature, top_p=first.top_p, top_k=0)
                   if sampling else dict(do_sample=False))
        chosen = ChosenLogprobs(first.temperature)   # one step's logits at a time, not all steps
        out = self.model.generate(
            input_ids=ids_BP.to(self.device), attention_mask=mask_BP.to(self.device),
            max_new_tokens=first.max_new_tokens, eos_token_id=stop_ids or None,
            pad_token_id=self.pad_id, logits_processor=LogitsProcessorList(
                [MaskPadded(self.info.real_vocab), chosen]), **options)
        new_BL = out[:, width:]
        logprobs_BL = chosen.finish(new_BL).cpu()
        new_BL = new_BL.cpu()
        samples = [cut_at_stop(new_BL[row], logprobs_BL[row], stop_ids) for row in range(len(prompts))]
        results, start = [], 0
        for item in batch:      # back to [item][prompt][sample]
            per_prompt = []
            for _ in item.prompts:
                per_prompt.append(samples[start:start + item.num_samples])
                start += item.num_samples
            results.append(per_prompt)
        return results


def pad_packed(ids_T: torch.Tensor, lengths_B: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Packed sequences (one after another, lengths_B tokens each) as a right-padded [B, L]
    batch, in one masked copy: the mask's True cells, in row-major order, are the packed ids."""
    mask_BL = torch.arange(int(lengths_B.max())) < lengths_B[:, None]
    ids_BL = torch.full(mask_BL.shape, pad_id, dtype=ids_T.dtype)
    ids_BL[mask_BL] = ids_T
    return ids_BL


def _cat_ragged(cands: list[torch.Tensor]) -> torch.Tensor:
    """Stack [N_i, C_i] candidate blocks into [sum N_i, max C_i], padding with id 0."""
    width = max(c.shape[1] for c in cands)
    return torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1])) for c in cands])

