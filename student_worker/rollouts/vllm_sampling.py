"""Sampling completions from the student with a vLLM engine in the worker's process.

The `hf` engine (sampling.py) decodes with the training model itself; this one keeps a second
copy of the student inside an in-process vLLM `LLM` and pushes the trained weights into it after
optimizer steps (`load_weights`), as TRL's colocate mode, verl and OpenRLHF do. Same call, same
`Completion`s, so the two are interchangeable.

What vLLM 0.32 offers, and what we use of it:
- In process: VLLM_ENABLE_V1_MULTIPROCESSING=0 puts the engine core in this process (a
  `UniProcExecutor`), so a weight sync hands vLLM the training model's tensors by reference,
  nothing is serialized. Set here before the engine starts; `VllmSampler` refuses to run
  without it.
- Weight sync: the worker's `reload_weights(weights_iterator=...)` (through
  `LLM.collective_rpc`). It re-runs the model's own `load_weights` (HF names -> vLLM's fused
  qkv / gate_up layout) and then the post-load processing; calling the model's `load_weights`
  directly (TRL's `...driver_worker.model_runner.model.load_weights`) no longer works once
  vLLM has processed the weights for its kernels (`Parameter` has no `weight_loader`).
  After a sync the prefix cache is reset: cached KV blocks were computed with the old weights.
- Log-probs at the sampling temperature: `logprobs_mode="processed_logprobs"` makes vLLM
  report log-softmax of the logits after temperature (and top-p: with top_p < 1 they are those
  of the renormalised nucleus, the distribution actually sampled). The default,
  "raw_logprobs", is the temperature-1 distribution. With temperature 0 (greedy) they are the
  raw log-probs, as in sampling.py.
- Stop ids: `ignore_eos=True` plus `stop_token_ids=eos_ids`, so exactly the given ids stop a
  completion (not also the checkpoint's eos); `generation_config="vllm"` so the checkpoint's
  generation_config.json (top_k=50, penalties, ...) does not change the policy sampled.
  Token ids in, token ids out: vLLM loads no tokenizer (`skip_tokenizer_init`).
- Under torchrun (`start_sampler`, world > 1): `distributed_executor_backend=
  "external_launcher"`, as TRL's colocate mode: each rank's engine joins the ranks' process
  group (one engine per rank, tensor parallel 1, LOCAL_RANK's device) instead of starting a
  world of its own; in process all the same (`ExecutorWithExternalLauncher`). Shutting the
  engine down (`close`) also destroys that group, so it comes last.
- Padded embedding rows (ids at or beyond the tokenizer's size) are never drawn: every request
  carries one `logit_bias` of -inf on them, built once per tokenizer size
  (distill/padded_vocab.py `padded_ids_bias`: not `allowed_token_ids`, which vLLM's
  V2 model runner caps at 1,024 ids and which costs ~60 ms of CPU a request on the V1 runner).
  The bias is added before temperature and the processed log-probs, so padded ids carry no
  probability in the log-probs reported either.
- Sleep mode (GPU): with `enable_sleep_mode`, `sleep()` frees the engine's GPU memory for the
  update and `wake_up()` takes it back. The CPU build has no sleep mode; there both are no-ops.
  Before waking up, PyTorch's cached blocks (the update's activations and gradients, freed but
  kept by its allocator) go back to the device (`torch.cuda.empty_cache`): vLLM's wake-up
  allocates with its own allocator and cannot use them.

On a CPU: `cpu_kv_cache_gib` sets VLLM_CPU_KVCACHE_SPACE (vLLM's own sizing fails on small
machines) and OMP_NUM_THREADS defaults to torch's thread count. On a GPU,
`vllm_memory_fraction` is vLLM's `gpu_memory_utilization`: the share of the GPU's memory the
engine may take (weights + KV cache), so the training model, its gradients and optimizer state
must fit in the rest.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from distill.padded_vocab import logit_bias_limit, padded_ids_bias
from student_worker.rollouts.sampling import Completion


class VllmSampler:
    """A vLLM engine for the student, sampling with the weights last given to `load_weights`."""

    def __init__(self, model_dir: str, *, device: str = "cpu", dtype: str = "float32",
                 max_model_len: int | None = None, vllm_memory_fraction: float = 0.3,
                 cpu_kv_cache_gib: float = 1.0, enforce_eager: bool = True, seed: int = 0,
                 load_format: str = "auto", distributed_executor_backend: str | None = None):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gib))
            os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        from vllm import LLM
        from vllm.platforms import current_platform

        self.can_sleep = current_platform.is_sleep_mode_available()
        # vLLM's CPU worker replaces torch.set_num_threads by a no-op (it pins threads in its
        # own worker processes). In process nothing was pinned, and the trainer sets its threads.
        set_num_threads = torch.set_num_threads
        self.llm = LLM(model=str(model_dir), dtype=dtype, seed=seed, max_model_len=max_model_len,
                       gpu_memory_utilization=vllm_memory_fraction, enforce_eager=enforce_eager,
                       enable_sleep_mode=self.can_sleep, logprobs_mode="processed_logprobs",
                       generation_config="vllm", skip_tokenizer_init=True, load_format=load_format,
                       distributed_executor_backend=distributed_executor_backend)
        torch.set_num_threads = set_num_threads
        executor = type(self.llm.llm_engine.model_executor).__name__
        if executor not in ("UniProcExecutor", "ExecutorWithExternalLauncher"):
            raise RuntimeError(f"vLLM started a {executor}; weight syncs need the engine in this "
                               "process (VLLM_ENABLE_V1_MULTIPROCESSING=0, tensor_parallel_size 1)")
        self.num_syncs = 0  # weight loads so far
        self.weights_step = 0  # the optimizer step of the weights last loaded (load_weights' step)
        self.rows = self.llm.llm_engine.model_config.get_vocab_size()   # embedding rows
        self._bias_limit = logit_bias_limit(self.llm)
        self._padded_bias: tuple[int | None, dict[int, float] | None] = (None, None)  # (real_vocab, bias)

    def sample(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, eos_ids: list[int], seed: int | None = None,
               pad_id: int | None = None, return_probs: bool = False,
               real_vocab: int | None = None) -> list[Completion]:
        """Continue each prompt once (sampling.sample's contract; its pad_id and return_probs
        are accepted and ignored: vLLM needs no padding and returns no full distributions).
        real_vocab: the tokenizer's size; ids at or beyond it (embedding padding) are never drawn
        and carry no probability (a -inf logit_bias, applied before the log-probs).
        With a seed, prompt i is drawn with seed + i: repeatable, and equal prompts still get
        different completions."""
        if return_probs:
            raise ValueError("the vllm engine returns no full distributions (return_probs); "
                             "speculative drafts need the hf engine")
        params = sampling_params(len(prompts), max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_p=top_p, eos_ids=eos_ids, seed=seed,
                                 padded_bias=self.padded_bias(real_vocab))
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                                    use_tqdm=False)
        completions = []
        for out in outputs:
            sample = out.outputs[0]
            # logprobs=0: one entry per position, the sampled token's (flat lists)
            logprobs = torch.tensor(sample.logprobs.logprobs, dtype=torch.float32)
            assert logprobs.numel() == len(sample.token_ids)
            completions.append(Completion(list(sample.token_ids), logprobs,
                                          sample.finish_reason == "stop"))
        return completions

    def padded_bias(self, real_vocab: int | None) -> dict[int, float] | None:
        """The logit_bias masking ids >= real_vocab, built on first use and kept (a run's
        tokenizer size does not change, so this is one dict for the whole run)."""
        if self._padded_bias[0] != real_vocab:
            self._padded_bias = (real_vocab, padded_ids_bias(real_vocab, self.rows, self._bias_limit))
        return self._padded_bias[1]

    @torch.no_grad()
    def load_weights(self, model: torch.nn.Module, step: int | None = None) -> None:
        """Copy `model`'s current weights into the engine (call after an optimizer step; `step`,
        the optimizer steps they have seen, is kept as `weights_step` for the staleness)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": hf_weights(model)})
        self.llm.reset_prefix_cache()
        self.num_syncs += 1
        if step is not None:
            self.weights_step = step

    @contextlib.contextmanager
    def updating(self, model: torch.nn.Module, step: int, sync_every: int):
        """Around optimizer step number `step` (counted from 1): the engine sleeps (GPU memory
        back to training), wakes up after, and loads `model`'s weights when step % sync_every
        is 0. Weights loaded anyway need not be kept while asleep (level 2)."""
        sync = step % sync_every == 0
        self.sleep(level=2 if sync else 1)
        try:
            yield
        finally:
            self.wake_up()
        if sync:
            self.load_weights(model, step)

    def sleep(self, level: int = 1) -> None:
        """Give the engine's GPU memory back for the update. Level 1 keeps the weights in host
        memory (wake_up copies them back); level 2 drops them too, the cheaper choice when
        `load_weights` follows the wake-up anyway. A no-op where vLLM has no sleep mode."""
        if self.can_sleep:
            self.llm.sleep(level=level)

    def wake_up(self) -> None:
        """Take the engine's GPU memory back. PyTorch's caching allocator still holds the blocks
        the update freed (activations, gradients); vLLM's wake-up allocates through its own
        allocator and cannot use them, so they are released to the device first."""
        if self.can_sleep:
            torch.cuda.empty_cache()   # a no-op where CUDA was never initialised
            self.llm.wake_up()

    def close(self) -> None:
        """Shut the engine down. vLLM then also tears down torch.distributed's default group
        (under torchrun, the ranks' own): call it last, after the run's collectives."""
        self.llm.llm_engine.engine_core.shutdown()


def sampling_params(n: int, *, max_new_tokens: int, temperature: float, top_p: float,
                    eos_ids: list[int], seed: int | None, padded_bias: dict[int, float] | None) -> list:
    """One vLLM SamplingParams per prompt (`VllmSampler.sample`'s options): prompt i seeded with
    seed + i; exactly `eos_ids` stop; the sampled token's log-prob only (logprobs=0, flat lists);
    no detokenizing; padded ids masked by the shared `padded_bias` (`VllmSampler.padded_bias`)."""
    from vllm import SamplingParams

    return [SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           seed=None if seed is None else seed + i, ignore_eos=True,
                           stop_token_ids=list(eos_ids), logprobs=0, flat_logprobs=True,
                           detokenize=False, logit_bias=padded_bias)
            for i in range(n)]


def hf_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in the Hugging Face checkpoint's naming, what vLLM's loaders read.

    - DDP: the wrapped module's weights.
    - PEFT LoRA: merged weights, W + the adapter's delta (`get_delta_weight`), computed per
      layer without touching the training model (no merge/unmerge round trip that would drift
      the base weights by rounding); adapters trained as whole modules (`modules_to_save`)
      replace the originals.
    - FSDP2 (DTensor parameters): each tensor is gathered whole with `full_tensor()`, one at a
      time, so every rank must run the sync (each rank holds its own engine); LoRA deltas
      too. FSDP1 needs a
      full state dict gathered first (`get_model_state_dict(..., full_state_dict=True)`).
    """
    model = getattr(model, "module", model)
    deltas: dict[str, torch.Tensor] = {}
    if hasattr(model, "peft_config"):
        from peft.tuners.lora import LoraLayer

        model = model.get_base_model()
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        delta = module.get_delta_weight(adapter)
                        if hasattr(delta, "full_tensor"):   # FSDP2: from sharded A and B (collective)
                            delta = delta.full_tensor()
                        deltas[f"{name}.weight"] = deltas.get(f"{name}.weight", 0) + delta
    for name, tensor in model.state_dict().items():
        if "lora_" in name or ".original_module." in name:
            continue
        name = name.replace(".base_layer.", ".")
        if ".modules_to_save." in name:
            head, _, rest = name.partition(".modules_to_save.")
            name = f"{head}.{rest.split('.', 1)[1]}"
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        if name in deltas:
            tensor = tensor + deltas[name].to(tensor.dtype)
        yield name, tensor


def start_sampler(cfg, model_dir: str, model: torch.nn.Module, device: torch.device, world: int,
                  step: int, dtype: torch.dtype) -> VllmSampler:
    """This rank's engine for a run (cfg: a RunConfig with sampling.engine=vllm), holding
    `model`'s weights as of optimizer step `step`, computing in `dtype`. vLLM reads only the folder's config
    (`load_format="dummy"`, random weights): the sync right after start brings the training
    model's own weights, whether they came from the folder, a checkpoint or a random init."""
    s = cfg.sampling
    sampler = VllmSampler(
        # the dtype the trainer computes in (bf16 under mixed precision, whose float32 master
        # weights the sync rounds), never vLLM's own reading of "auto"
        model_dir, device=device.type, dtype=str(dtype).removeprefix("torch."),
        vllm_memory_fraction=s.vllm_memory_fraction,
        enforce_eager=device.type == "cpu", seed=cfg.train.seed, load_format="dummy",
        # torchrun started the ranks: each engine joins their process group, as TRL's colocate
        # mode does, instead of starting a world of its own
        distributed_executor_backend="external_launcher" if world > 1 else None)
    sampler.load_weights(model, step)
    return sampler
