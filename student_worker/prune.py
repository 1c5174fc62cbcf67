"""`python -m student_worker.prune` moved to `python -m student_worker.tools.prune`; this alias
goes in the next release."""

import warnings

from student_worker.tools.prune import *  # noqa: F401,F403
from student_worker.tools.prune import main

warnings.warn("student_worker.prune moved to student_worker.tools.prune", DeprecationWarning, stacklevel=2)

if __name__ == "__main__":
    main()
