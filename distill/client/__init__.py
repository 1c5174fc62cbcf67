"""The teacher's client, for workers, tools and users alike: `TeacherClient` (the gRPC calls,
arrays decoded), `PatientTeacher` (retries an unreachable teacher for a while), `distill-teacher
info` (info.py) and the health probe (probe.py)."""

from distill.client.teacher import PatientTeacher, Teacher, TeacherUnreachable, check_tokenizer
from distill.client.teacher_client import AsyncTeacherClient, TeacherClient

__all__ = ["AsyncTeacherClient", "PatientTeacher", "Teacher", "TeacherClient", "TeacherUnreachable", "check_tokenizer"]
