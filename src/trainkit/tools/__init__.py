"""What the side commands do: runs, plot, predict, export, the end-of-run summary.

Only the CLI imports this package (a test keeps it so): the library never depends on
its commands.
"""
