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


def test_the_report_is_rendered_from_results_json_alone():
    """results.json holds everything the report shows (so docs/results/smollm2.md is rendered
    from the published file); reverse KL is better lower, and a tie is called a tie."""
    from examples.demo_llm import report

    entry = lambda rkl, agree: {"reverse_kl": [rkl], "agreement": [agree], "prefix_match": [0.1],  # noqa: E731
                                "answer_length": 9.0, "teacher_tokens": 1200, "wall_seconds": 30.0}
    per_prompt = {("gkd", 1): {"reverse_kl": [1.0, 1.2, 0.9, 1.1], "agreement": [0, 1, 0, 0],
                               "prefix_match": [0.1, 0.5, 0.2, 0.3], "answers": ["a", "b", "c", "d"]},
                  ("seqkd", 1): {"reverse_kl": [2.0, 2.4, 1.9, 2.2], "agreement": [0, 1, 0, 0],
                                 "prefix_match": [0.2, 0.5, 0.1, 0.3], "answers": ["w", "x", "y", "z"]}}
    results = {"teacher": {"student_layers": 8, "settings": {"warm_steps": 0, "test_prompts": 4},
                           "answer_length": 11.0},
               "seeds": [1], "split": "test", "initial": entry(9.4, 0.0), "warm_start": entry(0, 0) | {"reverse_kl": []},
               "methods": {"seqkd": entry(2.1, 0.25), "gkd": entry(1.05, 0.25)},
               "comparisons": report.comparisons(per_prompt, 1, ["seqkd", "gkd"]),
               "samples": report.samples(per_prompt, 1, ["gkd", "seqkd"], ["What is 2+2?", "p2", "p3", "p4"],
                                         [" 4 ", "t2", "t3", "t4"])}
    text = report.results_table(json.loads(json.dumps(results)), heading=False)
    assert "| `gkd` | 1.05 | 25% |" in text and "warm start" not in text
    assert "| `gkd` − `seqkd` | **-1.08 [-1.15, -1.00]** |" in text   # excludes 0: bold
    assert "On reverse KL, `gkd` beats `seqkd` by 1.1 nats/token" in text
    assert "agreement" in text and "| +0 [+0, +0] |" in text        # identical agreement: a tie, not bold
    assert "**What is 2+2?**" in text and "- teacher: '4'" in text and "- seqkd: 'w'" in text
    assert "One seed" in text
    headline = report.headline_table(results)
    assert "| `gkd` | **1.05** |" in headline and "| pruned (8 of 30 layers) | 9.40 |" in headline
