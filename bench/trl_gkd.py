"""TRL's side of bench/vs_trl.py: `GKDTrainer` (teacher in this process) on prompts given in a file.

    TRL_VENV/bin/python bench/trl_gkd.py SPEC.json

Runs inside TRL's own virtual environment (torch, transformers, trl; none of this project's
packages), started by bench/vs_trl.py, which writes SPEC.json:
{"student", "teacher", "out", "batches": [[prompt ids, ...] per step], "completions" (the data's
reference completion ids, same shape), "lr", "beta", "max_new_tokens", "temperature", "seed",
"threads"}. Writes OUT/model (the final student, for the caller's evaluation) and OUT/steps.json
(wall and CPU time at the end of every step, time in each step's `generate`).

The collator gives TRL what its own ChatML collator would: left-padded prompts and the data's
reference completion as labels (TRL counts `num_items_in_batch` from those); with lmbda = 1 every
batch is then replaced by the student's own samples.
"""

import json
import pathlib
import sys
import time

import torch


def main() -> None:
    spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    out = pathlib.Path(spec["out"])
    tokenizer = AutoTokenizer.from_pretrained(spec["student"])
    pad = tokenizer.pad_token_id
    student = AutoModelForCausalLM.from_pretrained(spec["student"])
    student.generation_config.eos_token_id = tokenizer.eos_token_id   # TRL's generate stops here
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"])
    rows = [{"prompt_ids": p, "completion_ids": c}
            for batch, refs in zip(spec["batches"], spec["completions"]) for p, c in zip(batch, refs)]

    def collate(examples: list[dict]) -> dict:
        P = max(len(e["prompt_ids"]) for e in examples)
        T = max(len(e["prompt_ids"]) + len(e["completion_ids"]) for e in examples)
        prompts_BP = torch.full((len(examples), P), pad)
        prompt_mask_BP = torch.zeros_like(prompts_BP)
        input_ids_BT = torch.full((len(examples), T), pad)
        attention_BT = torch.zeros_like(input_ids_BT)
        labels_BT = torch.full_like(input_ids_BT, -100)
        for row, e in enumerate(examples):
            p, seq = e["prompt_ids"], e["prompt_ids"] + e["completion_ids"]
            prompts_BP[row, P - len(p):], prompt_mask_BP[row, P - len(p):] = torch.tensor(p), 1
            input_ids_BT[row, :len(seq)], attention_BT[row, :len(seq)] = torch.tensor(seq), 1
            labels_BT[row, len(p):len(seq)] = torch.tensor(e["completion_ids"])
        return {"prompts": prompts_BP, "prompt_attention_mask": prompt_mask_BP, "input_ids": input_ids_BT,
                "attention_mask": attention_BT, "labels": labels_BT}

    generate_s: list[float] = []
    original = GKDTrainer.generate_on_policy_outputs

    def timed_generate(model, inputs, generation_config):
        start = time.perf_counter()
        result = original(model, inputs, generation_config)
        generate_s.append(time.perf_counter() - start)
        return result

    GKDTrainer.generate_on_policy_outputs = staticmethod(timed_generate)
    ends: list[float] = []
    cpu_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

    args = GKDConfig(
        output_dir=str(out / "trainer"), max_steps=len(spec["batches"]),
        per_device_train_batch_size=len(spec["batches"][0]), learning_rate=spec["lr"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", lmbda=1.0, beta=spec["beta"], temperature=spec["temperature"],
        max_new_tokens=spec["max_new_tokens"], seed=spec["seed"], use_cpu=True,
        train_sampling_strategy="sequential", dataloader_num_workers=0, report_to="none",
        save_strategy="no", logging_steps=50, disable_tqdm=True,
        bf16=False)   # TRL defaults to bf16 autocast; ours trains in float32 (and bf16 is slow on most CPUs)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, data_collator=collate,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[StepClock()])
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.train()
    trainer.model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    (out / "steps.json").write_text(json.dumps({"started": started, "step_ends": ends,
                                                "cpu_started": cpu_started, "cpu_step_ends": cpu_ends,
                                                "generate_s": generate_s}))


if __name__ == "__main__":
    main()
