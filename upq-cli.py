#!/usr/bin/env python3
"""upq-cli.py: run the client (upqcli.py) from a clone, beside upq.py; installed, it is `upq-cli`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from upqcli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
