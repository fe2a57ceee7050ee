"""Training: a config built into a Run on a device (build), the loop (loop), batching
(batches), the Events the loop talks to (session), checkpoint restore (restore),
torch.distributed (distributed), RNG states (rng), signals, host memory and progress.

Nothing here imports the CLI, typer or rich (a test keeps it so).
"""
