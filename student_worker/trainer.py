"""Moved to student_worker.train.trainer; this alias goes in the next release."""

import warnings

from student_worker.train.trainer import *  # noqa: F401,F403
from student_worker.train.trainer import train  # noqa: F401

warnings.warn("student_worker.trainer moved to student_worker.train.trainer", DeprecationWarning, stacklevel=2)
