"""`python -m teacher_server.probe` moved to `python -m distill.client.probe`; this alias goes in
the next release."""

import sys
import warnings

from distill.client.probe import main

warnings.warn("teacher_server.probe moved to distill.client.probe", DeprecationWarning, stacklevel=2)

if __name__ == "__main__":
    sys.exit(main())
