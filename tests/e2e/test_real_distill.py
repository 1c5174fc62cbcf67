"""A short gkd run on the real path: SmolLM2-135M-Instruct served by the real teacher server, a
student pruned from it to 2 of its 30 layers, chat prompts from the LLM demo rendered by the chat
template, a few steps with short answers. Proves chat data, end-of-turn stopping and the 49k
vocabulary end to end on every change (about a minute on 2 cores)."""

import json
import math

import pytest

from examples.demo_llm.prompts import chat_record, splits
from student_worker.config import load_config
from student_worker.train.trainer import setup, train
from tests.helpers import TeacherProcess


@pytest.fixture(scope="module")
def pruned_student(real_model_dir, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from student_worker.tools.prune import prune

    out = tmp_path_factory.mktemp("pruned")
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32)
    prune(model, 2)[0].save_pretrained(out)
    AutoTokenizer.from_pretrained(real_model_dir).save_pretrained(out)
    return out


def test_gkd_on_chat_prompts_through_the_real_teacher(real_model_dir, pruned_student, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(chat_record(p)) + "\n" for p in splits()["train"][:8]))
    server = TeacherProcess(real_model_dir, "--max-context", "512", start_timeout=300)
    try:
        server.wait_serving(timeout=300)
        cfg = load_config(None, "gkd", [
            f"student.path={pruned_student}", f"teacher.target={server.target}", f"data.source={data}",
            "data.batch_size=2", "sampling.max_new_tokens=8", "teacher.top_k=8", "train.steps=2",
            "train.eval_every=0", "optim.lr=1e-4"])
        run = setup(cfg, tmp_path / "probe")
        im_end = run.tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert im_end in run.ctx.eos_ids and run.ctx.real_vocab == 49152
        prompt = run.data.examples[0]
        assert prompt.prompt.endswith("<|im_start|>assistant\n") and prompt.prompt_ids.count(1) == 3
        run.teacher.client.close()
        train(cfg, tmp_path / "run", progress=False)
    finally:
        assert server.terminate() == 0, server.log()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert all(math.isfinite(x["loss"]) and x["completion_tokens"] > 0 for x in lines)
