"""The real-LLM demo's built-in prompts: documented sizes, disjoint splits, chat JSONL."""

import json

from examples.demo_llm import prompts


def test_splits_are_disjoint_and_sized_as_documented():
    splits = prompts.splits()
    assert {name: len(p) for name, p in splits.items()} == prompts.SPLITS == \
        {"train": 400, "dev": 50, "test": 50}
    every = [p for split in splits.values() for p in split]
    assert len(set(every)) == len(every)            # distinct, so no prompt is in two splits
    assert prompts.splits() == splits               # the same files on every run
    # every topic reaches the test split
    for pool in (pool for _, pool in prompts.TOPICS.values()):
        assert set(pool) & set(splits["test"])


def test_written_files_are_chat_records(tmp_path):
    paths = prompts.write(tmp_path)
    for name, path in paths.items():
        if name == "check":
            continue   # the next test
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(records) == prompts.SPLITS[name]
        assert all(r == {"messages": [{"role": "user", "content": r["messages"][0]["content"]}]}
                   for r in records)
        assert [r["messages"][0]["content"] for r in records] == prompts.splits()[name]


def test_prefix_match_credits_the_teacher_answer_repeated_before_the_first_difference():
    from examples.demo_llm.__main__ import prefix_match

    teacher = [5, 6, 7, 8]
    assert prefix_match(teacher, teacher) == 1.0
    assert prefix_match([5, 6, 9, 8], teacher) == 0.5
    assert prefix_match([5, 6], teacher) == 0.5          # stopped early: only what it repeated counts
    assert prefix_match([5, 6, 7, 8, 9], teacher) == 1.0   # ran on past the teacher's answer
    assert prefix_match([1], teacher) == 0.0
    assert prefix_match([], []) == 0.0


def test_checked_prompts_are_held_out_and_marked_by_their_answer(tmp_path):
    records = prompts.check_records()
    assert {r["kind"] for r in records[:3]} == set(prompts.CHECKS)    # kinds interleaved
    assert not {r["messages"][0]["content"] for r in records} & set(prompts.splits()["train"])
    assert len(records) == sum(1 for _ in prompts.write(tmp_path)["check"].open())
    assert prompts.is_correct("The capital of France is Paris.", "Paris")
    assert prompts.is_correct('The opposite of "open" is "closed".', "clos")          # a prefix
    assert prompts.is_correct("i walk   to school", "I walk to school.")             # case, spacing, punctuation
    assert not prompts.is_correct("The capital of France is Lyon.", "Paris")
    assert not prompts.is_correct("Walking to school.", "I walk to school.")


def test_a_loop_is_repetitive_and_an_answer_is_not():
    from examples.demo_llm.__main__ import repetitive

    assert repetitive([7, 8, 9] * 3) and repetitive([1, 2, 0, 0, 0, 0, 0])
    assert not repetitive([1, 2, 3, 1, 2, 3, 4]) and not repetitive([])


def _entry(rkl, checked, seeds=2):
    measures = {m: [0.1] * seeds for m in ("forward_kl", "teacher_loglik", "agreement", "prefix_match",
                                            "capped", "repetitive")}
    return measures | {"reverse_kl": [rkl + 0.1 * s for s in range(seeds)], "check_accuracy": [checked] * seeds,
                       "answer_length": [9.0] * seeds, "teacher_tokens": 1200, "wall_seconds": 30.0}


def test_the_report_is_rendered_from_results_json_alone():
    """results.json holds everything the report shows (so docs/results/smollm2.md is rendered
    from the published file); lower is better for KL, higher for checked answers, and a tie is
    called a tie. Intervals pair over seeds and prompts."""
    from examples.demo_llm import report

    def measured(rkl, checked, answers):
        m = {k: [0.0, 0.0, 0.0, 0.0] for k in report.MEASURES}
        return m | {"reverse_kl": rkl, "check_accuracy": checked, "answers": answers}

    per_prompt = {}
    for seed in (1, 2):
        per_prompt["gkd", seed] = measured([1.0, 1.2, 0.9, 1.1], [1, 0, 0, 0], ["a", "b", "c", "d"])
        per_prompt["seqkd", seed] = measured([2.0, 2.4, 1.9, 2.2], [1, 0, 0, 0], ["w", "x", "y", "z"])
    teacher = {m: 0.5 for m in report.QUALITY} | {"student_layers": 8, "answer_length": 11.0,
                                                  "settings": {"warm_steps": 0, "test_prompts": 4, "check_prompts": 4}}
    results = {"teacher": teacher, "seeds": [1, 2], "split": "test", "initial": _entry(9.4, 0.0),
               "warm_start": _entry(0, 0) | {"reverse_kl": []},
               "methods": {"seqkd": _entry(2.1, 0.25), "gkd": _entry(1.05, 0.25)},
               "comparisons": report.comparisons(per_prompt, [1, 2], ["seqkd", "gkd"]),
               "samples": report.samples(per_prompt, 1, ["gkd", "seqkd"], ["What is 2+2?", "p2", "p3", "p4"],
                                         [" 4 ", "t2", "t3", "t4"])}
    text = report.results_table(json.loads(json.dumps(results)), heading=False)
    assert "| `gkd` | 1.10 (1.05 to 1.15) | 0.10 (0.10 to 0.10) |" in text and "warm start" not in text
    assert "| `gkd` − `seqkd` | **-1.08 [-1.14, -1.02]** |" in text   # excludes 0: bold
    assert "- Reverse KL: better: `gkd` vs `seqkd`." in text
    assert "- Checked right: tie: `gkd` vs `seqkd`." in text and "| +0 [+0, +0] |" in text   # a tie, not bold
    assert "| teacher | – | – | 0.50 | 50% |" in text
    assert "**What is 2+2?**" in text and "- teacher: '4'" in text and "- seqkd: 'w'" in text
    assert "One seed" not in text
    headline = report.headline_table(results)
    assert "| `gkd` | **1.10** |" in headline and "| pruned (8 of 30 layers) | 9.45 |" in headline
