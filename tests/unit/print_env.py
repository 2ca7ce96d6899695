"""A child for ``test_procs``: prints the environment variables named by its arguments."""

import os
import sys

if __name__ == "__main__":
    print(*(os.environ.get(name) for name in sys.argv[1:]))
