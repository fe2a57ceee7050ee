"""The one exception hierarchy of trainkit.

The library raises these; only the CLI turns them into a message and an exit code
(0 ok, 1 runtime failure, 2 bad usage or config, 130/143 interrupted, 124 preempted). Each subclass
carries the exit code that fits it, so the CLI never has to guess.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: object) -> str:
    """`text` with newlines and other control characters escaped (a key, path or value a
    user typed may hold them; a message stays one line whatever it quotes)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


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
        where = f"{one_line(self.source)}: " if self.source else ""
        if len(self.problems) == 1:
            return f"{where}{one_line(self.problems[0])}"
        count = len(self.problems)
        lines = "\n".join(f"  - {one_line(p)}" for p in self.problems)
        return f"{where}{count} problems in the config:\n{lines}"


class RegistryError(ConfigError):
    """Unknown or duplicate component name."""


class DataError(TrainkitError):
    """Data set files missing, truncated or unreadable."""


class DataContentError(DataError):
    """Data that reads but does not fit what the config asks or what training saw (a value
    that is not a number, missing values, a class only the test rows have): fixed in the data
    or the config."""

    exit_code = 2


class BadDataFileError(DataError):
    """Data files that cannot be read as what they claim to be (empty, truncated, corrupt,
    unreadable, a symlink loop); the message names the first few and the count."""


class DataLayoutError(DataError):
    """A data folder not laid out as its data set expects (no images, a class folder without
    images, a class that only the test split has): fixed by pointing elsewhere or reorganising."""

    exit_code = 2


class DataChangedError(DataError):
    """The data on disk differs from what a checkpoint recorded (files added, removed,
    replaced): resuming or evaluating on it would not be the same run."""

    exit_code = 2


class DataLoaderError(DataError):
    """Reading a batch failed in the loader (a worker died or raised); the loop saves a
    checkpoint of what it had trained before the run ends."""


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
    """Training into a folder that already holds a run, without overwrite.

    `how_to_continue` is a command that continues the run (or None when it cannot be
    continued); `overwrite` is how the caller spells the way to replace it: `overwrite=True`
    in Python, and the CLI rewords it as `--overwrite` (`reworded`)."""

    def __init__(self, run_dir: str, state: str, how_to_continue: str | None, overwrite: str = "overwrite=True"):
        self.run_dir, self.state, self.how_to_continue, self.overwrite = run_dir, state, how_to_continue, overwrite
        cont = f"{how_to_continue}, " if how_to_continue else ""
        super().__init__(
            f"{run_dir} already holds {state}; {cont}choose another name (name=...), or pass {overwrite} to replace it"
        )

    def reworded(self, overwrite: str) -> RunExistsError:
        return RunExistsError(self.run_dir, self.state, self.how_to_continue, overwrite)


class RunFolderBusyError(UsageError):
    """Another process holds the run folder's lock (it is training or resuming there)."""


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


class RunStopped(TrainkitError):
    """A sink ended the run on purpose (a sweep's pruner): the run saves a checkpoint marked as
    stopped (so it is not resumed) and ends with `status` in its run folder, then this is raised."""

    status = "stopped"


class UntrustedPluginError(PluginError):
    """A checkpoint names plugin modules the user has not allowed to be imported (importing
    runs their code): refused, like `trust_remote_code=False` in the Hugging Face libraries."""


class TrainingInterrupted(TrainkitError):
    """SIGINT or SIGTERM arrived; a checkpoint was written and the run stopped."""

    def __init__(self, signum: int, run_dir: str | None, step: int):
        import signal

        self.signum, self.run_dir, self.step = signum, run_dir, step
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as shells report
        name = signal.Signals(signum).name
        saved = f"checkpoint saved at step {step}" if run_dir else "nothing saved"
        super().__init__(f"interrupted by {name}; {saved}")

    @staticmethod
    def for_signal(signum: int, run_dir: str | None, step: int) -> TrainingInterrupted:
        """The interruption a signal means: SIGUSR1 is a preemption notice, the others a stop."""
        import signal

        kind = TrainingPreempted if signum == getattr(signal, "SIGUSR1", None) else TrainingInterrupted
        return kind(signum, run_dir, step)


class TrainingPreempted(TrainingInterrupted):
    """SIGUSR1 arrived (what SLURM sends before a time limit with --signal=USR1@90): a checkpoint
    was written and the run stopped with exit code 124, so a job script can requeue itself."""

    def __init__(self, signum: int, run_dir: str | None, step: int):
        super().__init__(signum, run_dir, step)
        self.exit_code = 124
