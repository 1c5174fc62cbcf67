"""student_worker.tools.prune for real: the command on a tiny teacher (the pruned model is the teacher
without the dropped layers) and SmolLM2-135M pruned to 8 of its 30 layers."""

import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scripts.tiny_model import make_tiny_model
from student_worker.tools.prune import prune


def test_pruned_model_is_the_teacher_without_the_dropped_layers(tmp_path):
    teacher_dir = make_tiny_model(tmp_path / "teacher", num_hidden_layers=5)
    out = tmp_path / "student"
    done = subprocess.run([sys.executable, "-m", "student_worker.tools.prune", "--model", str(teacher_dir),
                           "--keep-layers", "3", "--output", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "kept layers [0, 2, 4] of 5" in done.stdout

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(out).eval()
    assert student.config.num_hidden_layers == 3
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(teacher_dir).get_vocab()
    assert student.generation_config.eos_token_id == teacher.generation_config.eos_token_id
    # the same function as the teacher with layers 1 and 3 taken out
    teacher.model.layers = torch.nn.ModuleList([teacher.model.layers[i] for i in (0, 2, 4)])
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, teacher(ids, use_cache=False).logits)
        # and its KV cache works: greedy decoding with the cache equals the full forward's argmax
        generated = student.generate(ids[:1], max_new_tokens=6, do_sample=False)
        logits = student(generated[:, :-1]).logits[0, ids.shape[1] - 1:]
    assert generated[0, ids.shape[1]:].tolist() == logits.argmax(-1).tolist()


def test_smollm2_pruned_to_8_of_30_layers(real_model_dir, tmp_path):
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(real_model_dir)
    student, keep = prune(teacher, 8)
    student.save_pretrained(tmp_path)
    student = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    params = sum(p.numel() for p in student.parameters())
    assert 56e6 < params < 58e6                         # half of it the tied 49,152 x 576 embedding
    assert student.config.tie_word_embeddings and student.config.num_hidden_layers == 8
    torch.testing.assert_close(student.model.layers[1].mlp.up_proj.weight,
                               teacher.model.layers[keep[1]].mlp.up_proj.weight)
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}],
                                           add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = student.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1] and out.max() < len(tokenizer)
