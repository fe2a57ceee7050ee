"""The `trainkit` command. Thin: parse arguments, call the API, print, pick the exit code.

This is the only module that turns a TrainkitError into a message and an exit code
(0 ok, 1 runtime failure, 2 bad usage or config, 130/143 interrupted, 124 preempted). torch is never
imported at module level, so `--help` and `--version` answer instantly.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import typer
import typer.core

from trainkit._version import __version__


class _Argument(typer.core.TyperArgument):
    """An argument shown by its metavar alone (`CONFIG`, `[KEY=VALUE...]`), not with Typer's
    Python type (`<list[str]>`) and braces."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None if self.metavar else super().display_type_rich(ctx)

    def _usage_display_name(self) -> str:
        return self.metavar or super()._usage_display_name()

    def _rich_display_name(self) -> str:
        return self.metavar or super()._rich_display_name()


class _Command(typer.core.TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is typer.core.TyperArgument:
                param.__class__ = _Argument


app = typer.Typer(
    name="trainkit",
    help="Train PyTorch models from a YAML config: train, eval, resume, and more.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,
)

OVERRIDES = typer.Argument(
    None,
    metavar="[KEY=VALUE...]",
    help="Overrides like optimizer.lr=0.1 trainer.epochs=2 (YAML values).",
    show_default=False,
)
DEVICE = typer.Option(
    None, "--device", metavar="DEVICE", help="auto | cpu | cuda | cuda:N | mps (overrides trainer.device)."
)
QUIET = typer.Option(False, "--quiet", "-q", help="Only errors and the final result.")
IMPORTS = typer.Option(
    None,
    "--import",
    metavar="MODULE",
    help="Import this module first (repeatable): its components register, and a checkpoint may import it.",
)
TRUST = typer.Option(
    False,
    "--trust-checkpoint-plugins",
    help="Import every plugin module the checkpoint names (importing runs their code: trust its source).",
)
NPROC = typer.Option(1, "--nproc", min=1, metavar="N", help="Processes on this machine (starts torch.distributed.run).")
RUNS_DIR = "checkpoints"  # checkpoint.dir's default
CKPT = typer.Option(None, "--ckpt", metavar="PATH", help="Checkpoint file (or run folder: its best.pt).")


def _under_torchrun() -> bool:
    return "TORCHELASTIC_ERROR_FILE" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _err(text: str) -> None:
    # under torchrun every rank writes to the same terminal: say which one speaks
    prefix = f"[rank {os.environ.get('RANK', '?')}] " if _under_torchrun() else ""
    print(prefix + text, file=sys.stderr, flush=True)


class _LogHandler(logging.Handler):
    """trainkit's log records as lines on stderr: warnings always, notes unless --quiet."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            _err(f"warning: {record.getMessage()}")
        elif _is_main():
            _err(record.getMessage())


def _setup_logging(quiet: bool = False) -> None:
    logger = logging.getLogger("trainkit")
    handler = next((h for h in logger.handlers if isinstance(h, _LogHandler)), None)
    if handler is None:
        handler = _LogHandler()
        logger.addHandler(handler)
        logger.propagate = False
    level = logging.WARNING if quiet else logging.INFO
    handler.setLevel(level)
    logger.setLevel(level)


def _call(fn: Callable[[], Any], quiet: bool = False) -> Any:
    """Run a command body; map trainkit's errors to one line on stderr and an exit code."""
    from trainkit.errors import TrainingInterrupted, TrainkitError

    _setup_logging(quiet)
    try:
        return fn()
    except TrainingInterrupted as exc:
        if _is_main():
            _err(f"{exc}")
            if exc.run_dir:
                _err(f"resume with: trainkit resume {exc.run_dir}")
        raise typer.Exit(exc.exit_code) from None
    except TrainkitError as exc:
        from trainkit.errors import ConfigError, UsageError, one_line

        # A usage or config error is the same on every rank (same files, same arguments):
        # under torchrun one process per machine says it, not every rank.
        text = str(exc) if isinstance(exc, ConfigError) else one_line(exc)
        silent = isinstance(exc, UsageError) and os.environ.get("LOCAL_RANK", "0") != "0"
        if not silent:
            _err(f"error: {text}")
        _record_for_torchrun(exc, text)
        if silent:
            _wait_for_local_rank_0(exc.exit_code)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None
    except MemoryError:  # outside the API's own translation (e.g. while reading a huge config)
        _err("error: out of host memory")
        raise typer.Exit(1) from None
    except EOFError as exc:
        # Click answers an EOFError with a bare "Aborted!" (meant for a prompt on a closed
        # stdin; trainkit has none): one from a reader (numpy's on an empty file, say) is an
        # unexpected failure, and its traceback says where, like any other
        raise RuntimeError(f"unexpected end of data: {exc}") from exc


def _wait_for_local_rank_0(code: int) -> None:
    """A silent rank's exit has torchrun stop the other workers (SIGTERM) at once, perhaps
    before local rank 0 has printed the error they share: both reach it within milliseconds.
    So wait for that SIGTERM (rank 0 has exited), then exit with this rank's own code; after
    10 s (on a loaded machine rank 0 may get there seconds later), exit anyway."""
    import signal
    import time

    signal.signal(signal.SIGTERM, lambda *_: os._exit(code))
    time.sleep(10.0)


def _record_for_torchrun(exc: Exception, text: str) -> None:
    """Under torchrun, leave this rank's message for the launcher's failure summary: in the
    error file's format (ErrorHandler.record_exception's), with the message where that puts a
    traceback; a trainkit error is one line by design, its traceback only noise."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import time

    record = {
        "message": f"{type(exc).__name__}: {text}",
        "extraInfo": {"py_callstack": text, "timestamp": str(int(time.time()))},
    }
    try:
        with open(path, "w") as f:
            json.dump({"message": record}, f)
    except OSError:
        pass  # the summary then says less; the error itself was printed


def _version(value: bool) -> None:
    if value:
        print(f"trainkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train PyTorch models from a YAML config."""


def _launch_distributed(nproc: int, argv: list[str], quiet: bool) -> None:
    """Re-run this command under torch.distributed's own launcher (what torchrun runs), through
    trainkit.launch, which forwards SIGUSR1 and exits with the workers' own exit code. This
    process becomes the launcher (exec), so killing it stops the workers too (they watch it)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads is None:
        # what torchrun would do with a banner: share the CPU cores instead of each process
        # taking them all (that thrashes); said on trainkit's own start line instead
        threads = str(max(1, _cpu_count() // nproc))
        os.environ["OMP_NUM_THREADS"] = threads
        where = f"{_cpu_count()} CPU cores / {nproc}"
    else:
        where = "OMP_NUM_THREADS from the environment"
    if not quiet:
        each = f"{threads} CPU thread{'' if threads == '1' else 's'} each"
        _err(f"starting {nproc} processes (torch.distributed, this machine), {each} ({where})")
    command = [
        sys.executable,
        "-m",
        "trainkit.launch",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "trainkit",
        *argv,
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def _launch_checked(dry_run: Callable[[], dict[str, Any]], nproc: int, quiet: bool) -> None:
    """`--nproc N`: check in this process what the workers would do (`dry_run`: config, run
    folder and its lock, device), so a mistake is one line and exit 2 before any worker
    starts; a run with nothing left to train says so and exits 0; else launch."""

    def check() -> dict[str, Any]:
        from trainkit.training.distributed import check_launch

        checked = dry_run()
        if not checked.get("already_complete"):
            check_launch(checked["config"]["trainer"]["device"], nproc)
        return checked

    checked = _call(check, quiet)
    if checked.get("already_complete"):  # nothing to train: no processes to start
        _print_result(checked, quiet, "trained")
        raise typer.Exit(0)
    _launch_distributed(nproc, _strip_nproc(sys.argv[1:]), quiet)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _print_result(result: dict[str, Any], quiet: bool, verb: str) -> None:
    """The one line that ends a run (the epoch lines came as it went, on stderr)."""
    if result.get("already_complete"):
        print(result["message"])
        return
    from trainkit.training.session import describe_early_stop

    best = result["best_metric"]
    best_text = (
        f"best {result['monitor']} {best:.4f} at epoch {result['best_epoch']}" if best is not None else "no best"
    )
    stop = result.get("early_stop")
    early = f" (stopped early: {describe_early_stop(stop)})" if stop else ""
    epochs = f"{result['epochs']} epoch" + ("" if result["epochs"] == 1 else "s")
    from rich.console import Console

    # bold on a terminal; NO_COLOR means no escape codes at all (rich's own no_color still sends bold)
    console = Console(color_system=None if os.environ.get("NO_COLOR") else "auto", highlight=False)
    console.print(
        f"{verb} {epochs}{early}, {result['step']} steps; {best_text}; checkpoints in {result['run_dir']}",
        style="bold",
        soft_wrap=True,
    )


def _check_device(device: str | None) -> None:
    """A --device value the config would refuse, named as the flag the user typed."""
    if device is None:
        return
    from pydantic import ValidationError

    from trainkit.config import TrainerConfig
    from trainkit.errors import UsageError

    try:
        TrainerConfig(device=device)
    except ValidationError:
        raise UsageError(f"--device {device}: should be one of auto, cpu, cuda, cuda:N, mps") from None


def _checkpoint_first(ckpt: str | None, args: list[str] | None, command: str, rest: str) -> tuple[str, list[str]]:
    """The checkpoint from --ckpt, or else the first argument (`trainkit eval RUN`)."""
    from pathlib import Path

    from trainkit.errors import UsageError

    args = list(args or [])
    if ckpt is not None:
        return ckpt, args
    usage = f"trainkit {command} PATH {rest} (or --ckpt PATH)"
    if not args:
        raise UsageError(f"give the checkpoint file or run folder: {usage}")
    if "=" in args[0] and not Path(args[0]).exists():
        raise UsageError(f"the checkpoint comes first, before {args[0]}: {usage}")
    return args[0], args[1:]


def _usage_error(message: str) -> Callable[[], None]:
    def fail() -> None:
        from trainkit.errors import UsageError

        raise UsageError(message)

    return fail


@app.command(cls=_Command, short_help="Train a model as a YAML config describes.")
def train(
    config: str = typer.Argument(..., metavar="CONFIG", help="Experiment YAML file."),
    overrides: list[str] | None = OVERRIDES,
    device: str | None = DEVICE,
    quiet: bool = QUIET,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run that already exists in the folder."),
    nproc: int = NPROC,
    imports: list[str] | None = IMPORTS,
    auto_resume: bool = typer.Option(
        False,
        "--auto-resume",
        help="Resume the run if it was interrupted, do nothing if it is complete, train otherwise "
        "(for job scripts that a cluster restarts).",
    ),
) -> None:
    """Train a model as the config describes; checkpoints go to <checkpoint.dir>/<name>/."""
    if auto_resume and overwrite:
        _call(_usage_error("--auto-resume and --overwrite contradict each other; choose one"))
    if nproc > 1:

        def dry_run() -> dict[str, Any]:
            from trainkit.api import auto_resume as run_auto_resume
            from trainkit.api import train as run_train

            if auto_resume:
                return run_auto_resume(config, overrides or [], device=device, imports=imports or [], dry_run=True)
            return run_train(
                config, overrides or [], device=device, overwrite=overwrite, imports=imports or [], dry_run=True
            )

        _launch_checked(dry_run, nproc, quiet)

    def body() -> None:
        from trainkit.api import auto_resume as run_auto_resume
        from trainkit.api import train as run_train
        from trainkit.errors import RunExistsError

        _check_device(device)
        _own_process()
        try:
            if auto_resume:
                result = run_auto_resume(config, overrides or [], device=device, quiet=quiet, imports=imports or [])
            else:
                result = run_train(
                    config, overrides or [], device=device, quiet=quiet, overwrite=overwrite, imports=imports or []
                )
        except RunExistsError as exc:  # the API says overwrite=True; here it is a flag
            raise exc.reworded("--overwrite") from None
        if _is_main():
            _print_result(result, quiet, "trained")

    _call(body, quiet)


@app.command(cls=_Command, short_help="Continue a run exactly where it stopped, or train it longer.")
def resume(
    path: str = typer.Argument(..., metavar="PATH", help="Run folder (newest good checkpoint) or a checkpoint file."),
    overrides: list[str] | None = OVERRIDES,
    device: str | None = DEVICE,
    quiet: bool = QUIET,
    nproc: int = NPROC,
    imports: list[str] | None = IMPORTS,
    trust: bool = TRUST,
) -> None:
    """Continue a run exactly where it stopped; trainer.epochs=N extends it.

    Changed optimizer options (optimizer.lr=...) apply from the next step on and are recorded
    in metrics.jsonl; scheduler.name=... gives the epochs still to train a new schedule (the
    way to extend a finished one-cycle or cosine run).
    """
    if nproc > 1:

        def dry_run() -> dict[str, Any]:
            from trainkit.api import resume as run_resume

            return run_resume(
                path, overrides or [], device=device, imports=imports or [], trust_plugins=trust, dry_run=True
            )

        _launch_checked(dry_run, nproc, quiet)

    def body() -> None:
        from trainkit.api import resume as run_resume

        _check_device(device)
        _own_process()
        result = run_resume(
            path, overrides or [], device=device, quiet=quiet, imports=imports or [], trust_plugins=trust
        )
        if _is_main():
            _print_result(result, quiet, "trained")

    _call(body, quiet)


@app.command("eval", cls=_Command, short_help="Print the metrics of a checkpoint on its test (or train) split.")
def eval_(
    args: list[str] | None = typer.Argument(
        None,
        metavar="[PATH] [KEY=VALUE...]",
        help="Checkpoint file or run folder (its best.pt), unless --ckpt gives it; then overrides.",
        show_default=False,
    ),
    ckpt: str | None = CKPT,
    split: str = typer.Option("test", "--split", metavar="SPLIT", help="test | train"),
    device: str | None = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
    imports: list[str] | None = IMPORTS,
    trust: bool = TRUST,
) -> None:
    """Evaluate a checkpoint; it carries its config, so nothing else is needed."""

    def body() -> None:
        from trainkit.api import evaluate

        path, overrides = _checkpoint_first(ckpt, args, "eval", "[KEY=VALUE...]")
        _check_device(device)
        _own_process()
        result = evaluate(path, split, overrides, device=device, imports=imports or [], trust_plugins=trust)
        if not _is_main():
            return
        if as_json:
            print(json.dumps(result))
        else:
            parts = "  ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items() if k != "split"
            )
            print(f"{result['split']}: {parts}")

    _call(body)


@app.command(cls=_Command, short_help="Check a config and print it resolved, defaults filled in.")
def validate(
    config: str = typer.Argument(..., metavar="CONFIG", help="Experiment YAML file."),
    overrides: list[str] | None = OVERRIDES,
    imports: list[str] | None = IMPORTS,
) -> None:
    """Check a config (every problem at once) and print the resolved result."""

    def body() -> None:
        from trainkit.config import dump_yaml, load_config
        from trainkit.plugins import import_user_modules

        import_user_modules(imports or [])
        cfg = load_config(config, overrides or [])
        print(dump_yaml(cfg.to_dict()), end="")
        _err(f"{config}: ok")

    _call(body)


@app.command("ls", cls=_Command, short_help="List the registered components and their options.")
def ls(
    kind: str | None = typer.Argument(None, metavar="[KIND]", help="models | datasets | optimizers | schedulers"),
    family: str | None = typer.Argument(
        None,
        metavar="[FAMILY]",
        help="with models: torchvision | timm lists that family's names; a name (torchvision.resnet18) its options",
    ),
    imports: list[str] | None = IMPORTS,
) -> None:
    """List the registered components and their options."""

    def body() -> None:
        from trainkit.errors import UsageError
        from trainkit.plugins import import_user_modules
        from trainkit.registry import MODELS, REGISTRIES

        import_user_modules(imports or [])
        by_plural = {f"{r.kind}s": r for r in REGISTRIES.values()}
        if kind is not None and kind not in by_plural:
            raise UsageError(f"unknown kind '{kind}'; choose one of {', '.join(by_plural)}")
        if family is not None:
            if kind != "models":
                raise UsageError(f"'{family}': only models come in families (trainkit ls models {family})")
            _ls_family(MODELS, family)
            return
        for plural, registry in by_plural.items():
            if kind not in (None, plural):
                continue
            print(f"{plural}:")
            for name in registry.names():
                _ls_entry(registry, name)
            for prefix, members in registry.families().items():
                missing = members.missing()
                count = f"needs {prefix}" if missing else f"{len(members.names())} models"
                how = missing or f"trainkit ls {plural} {prefix}"
                print(f"  {prefix + '.*':<22} {count} from {prefix} ({how})")

    _call(body)


def _ls_entry(registry: Any, name: str) -> None:
    import inspect

    options = ", ".join(
        p.name + ("" if p.default is inspect.Parameter.empty else f"={p.default!r}")
        for p in registry.options(name).values()
    )
    print(f"  {name:<22} {registry.get(name).summary}")
    if options:
        print(f"  {'':<22} options: {options}")


def _ls_family(registry: Any, family: str) -> None:
    """`ls models torchvision`: the family's names; `ls models torchvision.resnet18`: its options."""
    from trainkit.errors import UsageError

    families = registry.families()
    if family not in families:
        if family.partition(".")[0] in families:
            registry.get(family)  # an unknown name: the registry's message, with did-you-mean
            _ls_entry(registry, family)
            return
        raise UsageError(f"unknown model family '{family}'; choose one of {', '.join(families)}")
    missing = families[family].missing()
    if missing:
        raise UsageError(f"model family '{family}' {missing}")
    for name in families[family].names():
        print(f"{family}.{name}")


@app.command(cls=_Command, short_help="Print the JSON Schema of configs, for editors.")
def schema(imports: list[str] | None = IMPORTS) -> None:
    """Print the JSON Schema of experiment configs (for editors and CI checks).

    Each component section (model, data, optimizer, scheduler) lists every registered
    builder with its options. Save it and point a config at it with a first line
    `# yaml-language-server: $schema=../schema/trainkit.schema.json`.
    """

    def body() -> None:
        from trainkit.config.jsonschema import config_schema
        from trainkit.plugins import import_user_modules

        import_user_modules(imports or [])
        print(json.dumps(config_schema(), indent=2))

    _call(body)


@app.command(cls=_Command, short_help="List the runs under checkpoints/: progress, best metric, status.")
def runs(
    directory: str = typer.Argument(RUNS_DIR, metavar="[DIR]", help="Folder holding run folders (or one run)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of the table."),
) -> None:
    """List the runs under DIR: model, data set, epochs, best metric, status, last update.

    Status is complete, running, interrupted, failed or pruned (a sweep's trial); a run whose
    training process died without saying so (kill -9, power loss) shows as interrupted. A
    sweep's trials are listed together, as SWEEP/trial-NNNN.
    """

    def body() -> None:
        from pathlib import Path

        from trainkit.tools.runs import format_table, list_runs

        if directory == RUNS_DIR and not Path(directory).exists():
            # the default folder: nothing trained here yet is an answer, not a mistake
            if as_json:
                print("[]")
            else:
                _err(f"no runs yet: there is no {RUNS_DIR}/ folder here (trainkit train writes runs there)")
            return
        found = list_runs(directory)
        if as_json:
            print(json.dumps(found, indent=2))
        elif not found:
            _err(f"no runs in {directory}")
        else:
            print(format_table(found))

    _call(body)


@app.command(cls=_Command, short_help="Plot the loss and accuracy curves of one or more runs.")
def plot(
    run_dirs: list[str] = typer.Argument(
        ..., metavar="RUN...", help="Run folders (or their metrics.jsonl), one colour each."
    ),
    output: str = typer.Option(
        "curves.png", "--output", "-o", metavar="FILE", help="Image to write: .png, .svg or .pdf."
    ),
    width: int = typer.Option(900, "--width", metavar="PX", help="Figure width in pixels."),
    height: int = typer.Option(350, "--height", metavar="PX", help="Figure height in pixels."),
) -> None:
    """Plot loss (train and validation) and validation accuracy (MAE for regression) per epoch.

    Several runs go on one figure for comparison. A sweep folder draws its optimisation
    history and each param against the objective. Needs matplotlib: pip install 'trainkit[plot]'.
    """

    def body() -> None:
        from pathlib import Path

        from trainkit.sweeps.layout import is_sweep

        if len(run_dirs) == 1 and is_sweep(Path(run_dirs[0])):  # a sweep: its history and params
            from trainkit.tools.sweeps import plot_sweep

            print(f"wrote {plot_sweep(run_dirs[0], output, width, height)}")
            return
        from trainkit.tools.plot import plot_runs

        print(f"wrote {plot_runs(run_dirs, output, width, height)}")

    _call(body)


@app.command(cls=_Command, short_help="Search a config's params with Optuna; each trial is a run folder.")
def sweep(
    sweep_file: str = typer.Argument(..., metavar="SWEEP.yaml", help="Sweep file: base config, params, trials."),
    overrides: list[str] | None = OVERRIDES,
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Trials at once on this machine, each in its own process."),
    storage: str | None = typer.Option(
        None, "--storage", help="Study database, e.g. postgresql://user@host/db (default: a file in the sweep folder)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout instead of the table."),
    quiet: bool = QUIET,
) -> None:
    """Search the params of a base config with Optuna; each trial is a run folder of the sweep.

    Running the same command again continues the sweep (after a crash or kill -9 too):
    finished trials stay, interrupted ones resume from their last checkpoint. Several
    commands, on this machine or (with --storage) many, share one sweep. Needs Optuna:
    pip install 'trainkit[sweep]'.
    """

    def body() -> None:
        from trainkit.sweeps.driver import run_sweep

        summary = run_sweep(sweep_file, overrides or [], jobs=jobs, storage=storage)
        if as_json:
            print(json.dumps(summary))
            return
        from rich.console import Console

        from trainkit.tools.sweeps import best_line, seeds_table, sweep_table

        console = Console(color_system=None if os.environ.get("NO_COLOR") else "auto", highlight=False)
        if not quiet:
            console.print(sweep_table(summary))
            table = seeds_table(summary)
            if table is not None:
                console.print(table)
        console.print(best_line(summary), soft_wrap=True)

    _call(body, quiet)


@app.command(cls=_Command, short_help="Predict with a trained checkpoint: image files, or a table's rows.")
def predict(
    args: list[str] = typer.Argument(
        ...,
        metavar="[PATH] IMAGE...",
        help="Checkpoint (unless --ckpt gives it), then PNG/JPEG files (CSV/Parquet: a model trained on a table).",
    ),
    ckpt: str | None = CKPT,
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, metavar="K", help="How many classes to show per image."),
    invert: bool | None = typer.Option(
        None,
        "--invert/--no-invert",
        help="Invert the pixels first, or never; by default an image whose border is light where the "
        "training images' is dark (a dark-on-light photo for MNIST) is inverted, and the output says so.",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list to stdout."),
    imports: list[str] | None = IMPORTS,
    trust: bool = TRUST,
) -> None:
    """Classify images with a trained checkpoint: top-k class names with probabilities.

    Each image is converted to the data set's channels and size (resized whole) and
    normalised exactly as the training images were. For a model trained on a table, give
    CSV or Parquet files: every row gets its top-k classes (or, for a regression, its value
    in the target's units), its columns encoded exactly as the training rows were.
    """

    def body() -> None:
        from trainkit.errors import UsageError
        from trainkit.tools.predict import format_predictions
        from trainkit.tools.predict import predict as run_predict

        path, images = _checkpoint_first(ckpt, args, "predict", "IMAGE...")
        if not images:
            raise UsageError(f"give at least one image file after the checkpoint: trainkit predict {path} IMAGE...")
        results = run_predict(path, images, top_k, invert, imports=imports or [], trust_plugins=trust)
        print(json.dumps(results) if as_json else format_predictions(results))

    _call(body)


@app.command("export", cls=_Command, short_help="Write a model file that runs with torch alone.")
def export_(
    path: str | None = typer.Argument(
        None, metavar="[PATH]", help="Checkpoint file or run folder (its best.pt), unless --ckpt gives it."
    ),
    ckpt: str | None = CKPT,
    output: str = typer.Option(..., "--output", "-o", metavar="FILE", help="File to write, e.g. model.pt2."),
    fmt: str = typer.Option(
        "export", "--format", metavar="FORMAT", help="export (torch.export, default) | torchscript"
    ),
    imports: list[str] | None = IMPORTS,
    trust: bool = TRUST,
) -> None:
    """Export a checkpoint's model, input normalisation included, to run without trainkit.

    The input is float images in [0, 1] of shape (N, C, H, W), any batch size N; a table
    model takes raw feature values (N, inputs), categorical columns one-hot, in the order the
    file's trainkit.json lists as input_columns (data sets without recorded normalisation take
    the values training used); the output is the model's logits (or regression outputs). Load it with
    torch.export.load(path).module(), or torch.jit.load(path) for --format torchscript.
    """

    def body() -> None:
        from trainkit.tools.export import export as run_export

        source, extra = _checkpoint_first(ckpt, [path] if path else [], "export", "-o FILE")
        if extra:
            from trainkit.errors import UsageError

            raise UsageError(f"give the checkpoint once: --ckpt {ckpt} or {extra[0]}, not both")
        result = run_export(source, output, fmt, imports=imports or [], trust_plugins=trust)
        shape = ", ".join(str(d) for d in result["input_shape"])
        loader = "torch.export.load(path).module()" if fmt == "export" else "torch.jit.load(path)"
        print(
            f"wrote {result['output']} ({fmt}, {result['bytes'] / 1e6:.2f} MB): input {result['input']}, "
            f"shape ({shape}); load with {loader}"
        )

    _call(body)


def _own_process() -> None:
    """The trainkit command owns its process, so it may tune it for speed: on the CPU, keep
    freed host memory for reuse unless the config says trainer.host_memory=default."""
    from trainkit.training import hostmem

    hostmem.set_default("keep")


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def main() -> None:
    """The `trainkit` command (console script and `python -m trainkit`); ends the process."""
    try:
        if "TORCHELASTIC_ERROR_FILE" in os.environ:
            # a worker under torchrun: record an unexpected exception's traceback for its summary
            from torch.distributed.elastic.multiprocessing.errors import record

            record(app)()
        else:
            app()
    except SystemExit as done:
        _leave(done.code)
    _leave(0)


def _leave(code: str | int | None) -> NoReturn:
    """End the process with `code` once the command is done, skipping the interpreter's teardown.

    After `import torch` (and the torch._dynamo that torch.optim imports), Python's own
    shutdown spends about 0.8 s on this machine freeing modules and objects that the OS
    reclaims at once anyway: a tenth of a short training run, paid after its last file was
    written. So this does what that shutdown does that matters (Py_FinalizeEx's first
    steps): the exit handlers run (logging, multiprocessing's workers, MLflow, weakref
    finalizers such as temporary folders' removal) and the standard streams are flushed;
    then os._exit. trainkit writes its files through `with` blocks and closes its run log
    itself, so no buffered write waits for a destructor. The normal exit is taken where
    another non-daemon thread still runs (that shutdown waits for it) and where the exit
    carries a message rather than a number.
    """
    if code is not None and not isinstance(code, int):
        sys.exit(code)
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`| head`), or a closed stream
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    main()
