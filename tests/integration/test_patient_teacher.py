"""The patient teacher against an address nobody answers: it retries, announcing it on rank 0 only,
and gives up after its patience."""

import pytest

from distill.client.teacher import PatientTeacher, TeacherUnreachable
from distill.client.teacher_client import TeacherClient
from tests.helpers import free_port


def test_patient_teacher_announces_retries_on_rank_0_only(caplog):
    port = free_port()   # nobody listens there
    with TeacherClient(f"127.0.0.1:{port}", timeout=0.2) as client:
        for announce in (False, True):
            teacher = PatientTeacher(client, patience_s=1.0, announce=announce)
            with pytest.raises(TeacherUnreachable, match="unreachable for"):
                teacher.score([[1, 2, 3]], 1)
            assert teacher.outage_seconds > 0
            assert ("retrying in" in caplog.text) == announce
            caplog.clear()
