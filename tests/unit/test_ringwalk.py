"""ringwalk, the long-horizon task (student_worker/tasks/ringwalk.py): its check, its data and the
properties its design rests on (many answers, recoverable mistakes, one answer in the students' data)."""

import random

import pytest

from student_worker.tasks import TASKS
from student_worker.tasks import ringwalk as R
from student_worker.tasks.digsum import tokenizer

walk, canonical_walk = TASKS["ringwalk"], TASKS["ringwalk-canonical"]
SPLITS = ("train", "dev", "test")


def text(nodes) -> str:
    return "".join(map(str, nodes))


def test_every_prompt_has_its_canonical_and_random_walks_accepted():
    rng = random.Random(0)
    for split in SPLITS:
        for s, t, n in R.prompts_of(split):
            prompt = f"{s}{t}{n}="
            assert walk.check(prompt, text(R.canonical(s, t, n))) == 1.0
            assert walk.check(prompt, text(R.random_walk(s, t, n, rng))) == 1.0


@pytest.mark.parametrize("completion,why", [
    ("456787878787878787878787878787878789", "ends beside the target"),
    ("456787878787878787878787878787878", "stops short"),
    ("4567878787878787878787878787878787878", "runs long"),
    ("466787878787878787878787878787878787", "stays on a node (not a neighbour)"),
    ("457787878787878787878787878787878787", "jumps two nodes"),
    ("45678787878787878787878787878787878x", "not a digit"),
])
def test_the_check_refuses_what_is_not_a_walk(completion, why):
    assert walk.check("3736=", "456787878787878787878787878787878787") == 1.0
    assert walk.check("3736=", completion) == 0.0, why


def test_malformed_prompts_are_wrong_answers_not_errors():
    assert walk.check("37=", "4567") == 0.0 and walk.check("ab36=", "") == 0.0


def test_splits_own_disjoint_prompts_of_the_right_parity_and_length():
    prompts = {split: set(R.prompts_of(split)) for split in SPLITS}
    assert sum(map(len, prompts.values())) == 800 == len(set().union(*prompts.values()))
    assert all((t - s - n) % 2 == 0 and n in R.LENGTHS for p in prompts.values() for s, t, n in p)
    for split in SPLITS:   # examples draw only their split's prompts
        assert {R.parse(e["prompt"]) for e in walk.examples(split, 500)} <= prompts[split]


def test_the_students_data_shows_one_way_the_teachers_many():
    one, many = {}, {}
    for e in canonical_walk.examples("train", 2000):
        one.setdefault(e["prompt"], set()).add(e["completion"])
    for e in walk.examples("train", 2000):
        many.setdefault(e["prompt"], set()).add(e["completion"])
    assert all(len(c) == 1 for c in one.values())
    assert sum(len(c) > 1 for c in many.values()) > len(many) // 2
    # dev and test are the same for both: evaluation does not depend on which data trained
    assert canonical_walk.examples("test", 50) == walk.examples("test", 50)


def test_a_step_away_is_recoverable_while_the_steps_left_cover_the_distance():
    """After any valid prefix that keeps the target within reach, a random walk from there still
    ends on the target; the canonical data never visits two nodes past the target."""
    rng = random.Random(1)
    s, t, n = 3, 7, 36
    for k in range(1, n):
        prefix = R.random_walk(s, t, n, rng)[:k]
        rest = R.random_walk(prefix[-1], t, n - k, rng)
        assert R.is_walk(s, t, n, text(prefix + rest))
    assert all(set(R.canonical(s, t, n)[R.distance(s, t):]) == {t, (t + 1) % 10} for s, t, n in R.prompts_of("train"))


def test_the_demo_tokenizer_writes_every_prompt_and_answer():
    tok = tokenizer()
    e = walk.examples("train", 1)[0]
    ids = tok(e["prompt"] + e["completion"]).input_ids
    assert tok.unk_token_id not in ids and len(ids) == len(e["prompt"]) + len(e["completion"])
