"""The one exception hierarchy of trainkit.

The library raises these; only the CLI turns them into a message and an exit code
(0 ok, 1 runtime failure, 2 bad usage or config, 130/143 interrupted). Each subclass
carries the exit code that fits it, so the CLI never has to guess.
"""

from __future__ import annotations


class TrainkitError(Exception):
    """Base class: a failure trainkit can explain in one line."""

    exit_code = 1


class UsageError(TrainkitError):
    """The user asked for something that cannot work (bad path, bad option)."""

    exit_code = 2


class ConfigError(UsageError):
    """One or more problems with an experiment config, all reported together."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return f"{where}{self.problems[0]}"
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"{where}{count} problems in the config:\n{lines}"


class RegistryError(ConfigError):
    """Unknown or duplicate component name."""


class DataError(TrainkitError):
    """Data set files missing, truncated or unreadable."""


class MissingWeightsError(TrainkitError):
    """Pretrained weights asked for are not in the local cache; trainkit never downloads them."""


class CheckpointError(TrainkitError):
    """A checkpoint that cannot be written, read or used."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds Python objects beyond tensors and plain data: never unpickled."""


class NewerCheckpointError(CheckpointError):
    """A checkpoint written in a format newer than this trainkit reads."""


class CheckpointNotFoundError(CheckpointError, UsageError):
    """The path given for a checkpoint or run folder does not hold one."""

    exit_code = 2


class RunExistsError(UsageError):
    """Training into a folder that already holds a run, without --overwrite."""


class NonFiniteLossError(TrainkitError):
    """The loss became NaN or infinite; the last good checkpoint is left intact."""

    def __init__(self, epoch: int, step: int, value: float, what: str = "loss"):
        self.epoch, self.step, self.value = epoch, step, value
        became = f"became {value}" if what == "loss" else "are no longer finite"
        super().__init__(
            f"{what} {became} at epoch {epoch}, step {step}; stopped without saving "
            "over the last good checkpoint (lower the learning rate, or set trainer.grad_clip)"
        )


class OutOfMemoryError(TrainkitError):
    """The host or a device ran out of memory; the message says which and what to lower."""


class PluginError(TrainkitError):
    """A plugin module named by a config or checkpoint cannot be imported."""

    exit_code = 2


class TrainingInterrupted(TrainkitError):
    """SIGINT or SIGTERM arrived; a checkpoint was written and the run stopped."""

    def __init__(self, signum: int, run_dir: str | None, step: int):
        import signal

        self.signum, self.run_dir, self.step = signum, run_dir, step
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as shells report
        name = signal.Signals(signum).name
        saved = f"checkpoint saved at step {step}" if run_dir else "nothing saved"
        super().__init__(f"interrupted by {name}; {saved}")
