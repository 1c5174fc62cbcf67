"""The training model's options in one process: activation checkpointing, LoRA (PEFT) and its
checkpoints, on the tiny model with the chunked loss; the weights' and compute dtypes (FSDP2 against
DDP on two ranks: tests/e2e/test_parallel.py)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from student_worker.config import LoraConfig, load_config
from student_worker.losses import chunked_loss as C
from student_worker.rollouts.rollout import Rollout, token_batch
from student_worker.train.micro_batches import accumulate_gradients
from student_worker.train.parallel import export_hf, precision, prepare_student
from tests.helpers.batches import COMPLETIONS, PROMPTS, reverse_kl_step


def test_gradient_checkpointing_changes_no_gradient(tiny_model_dir):
    grads = []
    for checkpointing in (False, True):
        model = prepare_student(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64),
                                gradient_checkpointing=checkpointing)
        model.train()   # Hugging Face checkpoints layers only in training mode
        rollout = Rollout(PROMPTS, COMPLETIONS, "data")
        batch = token_batch(rollout, pad_id=0)
        weights_M = C.reduction_weights(batch.mask_BS, "token", C.completion_counts(batch.mask_BS))
        accumulate_gradients(model, model.get_output_embeddings(), batch.input_ids_BT, batch.attention_BT,
                             batch.mask_BS, C.nll, weights_M, {}, chunk_size=4)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert model.is_gradient_checkpointing
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-10, rtol=0, msg=name)


LORA = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])


def _lora_student(model_dir, adapters=None):
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    if adapters is not None:
        return PeftModel.from_pretrained(base, adapters, is_trainable=True)
    torch.manual_seed(0)   # the adapters' random init
    return prepare_student(base, lora=LORA)


def test_lora_trains_only_adapters_resumes_and_exports_merged(tiny_model_dir, tmp_path):
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).state_dict()
    straight = _lora_student(tiny_model_dir)
    optimizer = torch.optim.AdamW([p for p in straight.parameters() if p.requires_grad], lr=1e-2)
    losses = [reverse_kl_step(straight, straight, optimizer) for _ in range(3)]
    assert losses[2] < losses[0]

    # two steps, save adapters + optimizer, resume in a fresh model, one more step
    first = _lora_student(tiny_model_dir)
    optimizer = torch.optim.AdamW([p for p in first.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        reverse_kl_step(first, first, optimizer)
    first.save_pretrained(tmp_path / "adapters")
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    saved = sorted(p.name for p in (tmp_path / "adapters").iterdir())
    assert saved == ["README.md", "adapter_config.json", "adapter_model.safetensors"]   # adapters only
    resumed = _lora_student(tiny_model_dir, tmp_path / "adapters")
    optimizer = torch.optim.AdamW([p for p in resumed.parameters() if p.requires_grad], lr=1e-2)
    optimizer.load_state_dict(torch.load(tmp_path / "optimizer.pt"))
    assert abs(reverse_kl_step(resumed, resumed, optimizer) - losses[2]) < 1e-9

    # the base weights never moved; the merged export is an ordinary model with the same outputs
    base_now = resumed.get_base_model().state_dict()
    assert all(torch.equal(base_now[k], v) for k, v in original.items() if k in base_now)
    ids = torch.tensor([PROMPTS[0] + COMPLETIONS[0]])
    with torch.no_grad():
        expected = resumed(input_ids=ids).logits
    export_hf(tmp_path / "merged", resumed)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-9, rtol=0)
    assert not torch.equal(merged.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                           original["model.layers.0.self_attn.q_proj.weight"])


def test_student_dtype_and_hub_options():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    # mixed precision by default: float32 weights for AdamW, bf16 compute on a GPU
    assert precision("auto", "auto", lora=False, device=cpu) == (torch.float32, None)
    assert precision("auto", "auto", lora=False, device=gpu) == (torch.float32, torch.bfloat16)
    assert precision("auto", "auto", lora=True, device=gpu) == (torch.bfloat16, torch.bfloat16)   # frozen base
    assert precision("bfloat16", "none", lora=False, device=cpu) == (torch.bfloat16, None)   # asked for
    assert precision("float32", "bfloat16", lora=False, device=cpu) == (torch.float32, torch.bfloat16)
    cfg = load_config(None, "gkd", ["student.path=m", "teacher.target=x:1", "data.source=reverse",
                                    "student.revision=abc123", "student.trust_remote_code=true"])
    assert cfg.student.dtype == "auto" and cfg.student.revision == "abc123" and cfg.student.trust_remote_code
