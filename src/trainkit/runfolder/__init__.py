"""The run folder: its file names (layout), the checkpoint format (checkpoint), atomic
file writes (fileio), the checkpoints' rotation and recovery (folder) and the text logs
(runlog). `layout`, `fileio` and `runlog` never import torch, so the side commands that
only read run folders stay instant.
"""
