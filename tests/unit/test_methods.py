"""What a method needs (a teacher, which scores, a second call) follows from its parts."""

from student_worker.config import load_config
from student_worker.methods import METHODS
from student_worker.rollouts.rollout import Rollout

REQUIRED = ["student.path=s", "teacher.target=t:1", "data.source=reverse"]


def test_what_a_method_needs_follows_from_its_parts():
    cfg = load_config(None, "gkd", [*REQUIRED, "teacher.top_k=7"])
    assert [name for name, m in sorted(METHODS.items()) if not m.needs_teacher] == ["sft"]
    assert METHODS["rlkd"].score_top_k(cfg) == 1 and METHODS["gkd"].score_top_k(cfg) == 7
    assert METHODS["gkd"].needs_scores(Rollout([[1]], [[2]], "student"))
    # skd's rollouts already hold Verify's log-probs: no second call
    assert not METHODS["skd"].needs_scores(Rollout([[1]], [[2]], "interleaved", teacher_scores=[None]))
    assert not METHODS["seqkd"].needs_scores(Rollout([[1]], [[2]], "teacher"))
