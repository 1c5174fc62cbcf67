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
