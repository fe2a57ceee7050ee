"""`python -m trainkit` is the `trainkit` command (torchrun launches it this way)."""

import os
import sys

# `python -m` puts the working folder first on sys.path, where a stray `yaml.py` or a module
# unpacked beside a checkpoint would shadow what trainkit imports. The `trainkit` script
# has no such entry; neither has this: the working folder is added (at the end) only to
# import modules the user names (plugins.py).
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from trainkit.cli import main  # noqa: E402

main()
