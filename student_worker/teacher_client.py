"""Moved to distill.client (`from distill.client import TeacherClient`); this alias goes in the
next release."""

import warnings

from distill.client.teacher_client import *  # noqa: F401,F403
from distill.client.teacher_client import AsyncTeacherClient, TeacherClient  # noqa: F401

warnings.warn("student_worker.teacher_client moved to distill.client.teacher_client", DeprecationWarning,
              stacklevel=2)
