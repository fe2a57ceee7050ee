"""`python -m trainkit` is the `trainkit` command (torchrun launches it this way)."""

from trainkit.cli import main

main()
