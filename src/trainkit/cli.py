"""The `trainkit` command. Thin: parse arguments, call the API, print, pick the exit code.

This is the only module that turns a TrainkitError into a message and an exit code
(0 ok, 1 runtime failure, 2 bad usage or config, 130/143 interrupted). torch is never
imported at module level, so `--help` and `--version` answer instantly.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from trainkit._version import __version__

app = typer.Typer(
    name="trainkit",
    help="Train PyTorch models from a YAML config: train, eval, resume, and more.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,
)

OVERRIDES = typer.Argument(
    None, help="Overrides like optimizer.lr=0.1 trainer.epochs=2 (YAML values).", show_default=False
)
DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N | mps (overrides trainer.device).")
QUIET = typer.Option(False, "--quiet", "-q", help="Only errors and the final result.")


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
        _err(f"error: {exc}")
        if "TORCHELASTIC_ERROR_FILE" in os.environ:  # torchrun's failure summary shows this rank's message
            from torch.distributed.elastic.multiprocessing.errors import get_error_handler

            get_error_handler().record_exception(exc)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None
    except MemoryError:  # outside the API's own translation (e.g. while reading a huge config)
        _err("error: out of host memory")
        raise typer.Exit(1) from None


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


def _launch_distributed(nproc: int, argv: list[str]) -> None:
    """Re-run this command under torch.distributed's own launcher (what torchrun runs)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "trainkit",
        *argv,
    ]
    sys.stdout.flush()
    os.execv(sys.executable, command)


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
    from rich.console import Console

    from trainkit.tools.summary import summary_table

    # NO_COLOR means no escape codes at all: rich's own no_color still sends bold and italic
    console = Console(color_system=None if os.environ.get("NO_COLOR") else "auto", highlight=False)
    if not quiet and result["history"]:
        console.print(summary_table(result["history"], f"{verb}: {result['run_dir']}"))
    best = result["best_metric"]
    best_text = (
        f"best {result['monitor']} {best:.4f} at epoch {result['best_epoch']}" if best is not None else "no best"
    )
    early = " (stopped early)" if result["stopped_early"] else ""
    epochs = f"{result['epochs']} epoch" + ("" if result["epochs"] == 1 else "s")
    console.print(
        f"{verb} {epochs}{early}, {result['step']} steps; {best_text}; checkpoints in {result['run_dir']}",
        soft_wrap=True,
    )


@app.command()
def train(
    config: str = typer.Argument(..., help="Experiment YAML file."),
    overrides: list[str] | None = OVERRIDES,
    device: str | None = DEVICE,
    quiet: bool = QUIET,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run that already exists in the folder."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on this machine (starts torch.distributed.run)."),
) -> None:
    """Train a model as the config describes; checkpoints go to <checkpoint.dir>/<name>/."""
    if nproc > 1:
        _launch_distributed(nproc, _strip_nproc(sys.argv[1:]))

    def body() -> None:
        from trainkit.api import train as run_train

        _own_process()
        result = run_train(config, overrides or [], device=device, quiet=quiet, overwrite=overwrite)
        if _is_main():
            _print_result(result, quiet, "trained")

    _call(body, quiet)


@app.command()
def resume(
    path: str = typer.Argument(..., help="Run folder (newest good checkpoint) or a checkpoint file."),
    overrides: list[str] | None = OVERRIDES,
    device: str | None = DEVICE,
    quiet: bool = QUIET,
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on this machine (starts torch.distributed.run)."),
) -> None:
    """Continue a run exactly where it stopped; trainer.epochs=N extends it."""
    if nproc > 1:
        _launch_distributed(nproc, _strip_nproc(sys.argv[1:]))

    def body() -> None:
        from trainkit.api import resume as run_resume

        _own_process()
        result = run_resume(path, overrides or [], device=device, quiet=quiet)
        if _is_main():
            _print_result(result, quiet, "trained")

    _call(body, quiet)


@app.command("eval")
def eval_(
    ckpt: str = typer.Option(..., "--ckpt", help="Checkpoint file (or run folder: its best.pt)."),
    overrides: list[str] | None = OVERRIDES,
    split: str = typer.Option("test", "--split", help="test | train"),
    device: str | None = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
) -> None:
    """Evaluate a checkpoint; it carries its config, so nothing else is needed."""

    def body() -> None:
        from trainkit.api import evaluate

        _own_process()
        result = evaluate(ckpt, split, overrides or [], device=device)
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


@app.command()
def validate(
    config: str = typer.Argument(..., help="Experiment YAML file."),
    overrides: list[str] | None = OVERRIDES,
) -> None:
    """Check a config (every problem at once) and print the resolved result."""

    def body() -> None:
        from trainkit.config import dump_yaml, load_config

        cfg = load_config(config, overrides or [])
        print(dump_yaml(cfg.to_dict()), end="")
        _err(f"{config}: ok")

    _call(body)


@app.command("ls")
def ls(
    kind: str | None = typer.Argument(None, help="models | datasets | optimizers | schedulers"),
    family: str | None = typer.Argument(
        None,
        help="with models: torchvision | timm lists that family's names; a name (torchvision.resnet18) its options",
    ),
) -> None:
    """List the registered components and their options."""

    def body() -> None:
        from trainkit.errors import UsageError
        from trainkit.registry import MODELS, REGISTRIES

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


@app.command()
def schema(
    imports: list[str] | None = typer.Option(
        None, "--import", metavar="MODULE", help="Import a plugin module first, so its components are included."
    ),
) -> None:
    """Print the JSON Schema of experiment configs (for editors and CI checks).

    Each component section (model, data, optimizer, scheduler) lists every registered
    builder with its options. Save it and point a config at it with a first line
    `# yaml-language-server: $schema=../schema/trainkit.schema.json`.
    """

    def body() -> None:
        from trainkit.config.jsonschema import config_schema
        from trainkit.errors import PluginError
        from trainkit.plugins import import_modules

        problems = import_modules(list(imports or []))
        if problems:
            raise PluginError("; ".join(message for _, message in problems))
        print(json.dumps(config_schema(), indent=2))

    _call(body)


@app.command()
def runs(
    directory: str = typer.Argument("checkpoints", metavar="[DIR]", help="Folder holding run folders (or one run)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of the table."),
) -> None:
    """List the runs under DIR: model, data set, epochs, best metric, status, last update.

    Status is complete, running, interrupted or failed; a run whose training process died
    without saying so (kill -9, power loss) shows as interrupted.
    """

    def body() -> None:
        from trainkit.tools.runs import format_table, list_runs

        found = list_runs(directory)
        if as_json:
            print(json.dumps(found, indent=2))
        elif not found:
            _err(f"no runs in {directory}")
        else:
            print(format_table(found))

    _call(body)


@app.command()
def plot(
    run_dirs: list[str] = typer.Argument(
        ..., metavar="RUN...", help="Run folders (or their metrics.jsonl), one colour each."
    ),
    output: str = typer.Option("curves.png", "--output", "-o", help="Image to write: .png, .svg or .pdf."),
    width: int = typer.Option(900, "--width", help="Figure width in pixels."),
    height: int = typer.Option(350, "--height", help="Figure height in pixels."),
) -> None:
    """Plot loss (train and validation) and validation accuracy (MAE for regression) per epoch.

    Several runs go on one figure for comparison. Needs matplotlib: pip install 'trainkit[plot]'.
    """

    def body() -> None:
        from trainkit.tools.plot import plot_runs

        print(f"wrote {plot_runs(run_dirs, output, width, height)}")

    _call(body)


@app.command()
def predict(
    images: list[str] = typer.Argument(..., metavar="IMAGE...", help="PNG/JPEG files to classify."),
    ckpt: str = typer.Option(..., "--ckpt", help="Checkpoint file (or run folder: its best.pt)."),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="How many classes to show per image."),
    invert: bool = typer.Option(
        False, "--invert", help="Invert the pixels first (dark-on-light photos for MNIST-like data)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list to stdout."),
) -> None:
    """Classify images with a trained checkpoint: top-k class names with probabilities.

    Each image is converted to the data set's channels and size (resized whole) and
    normalised exactly as the training images were.
    """

    def body() -> None:
        from trainkit.tools.predict import format_predictions
        from trainkit.tools.predict import predict as run_predict

        results = run_predict(ckpt, images, top_k, invert)
        print(json.dumps(results) if as_json else format_predictions(results))

    _call(body)


@app.command("export")
def export_(
    ckpt: str = typer.Option(..., "--ckpt", help="Checkpoint file (or run folder: its best.pt)."),
    output: str = typer.Option(..., "--output", "-o", help="File to write, e.g. model.pt2."),
    fmt: str = typer.Option("export", "--format", help="export (torch.export, default) | torchscript"),
) -> None:
    """Export a checkpoint's model, input normalisation included, to run without trainkit.

    The input is float images in [0, 1] of shape (N, C, H, W), any batch size N (data sets
    without recorded normalisation, such as regression features, take the values training
    used); the output is the model's logits (or regression outputs). Load it with
    torch.export.load(path).module(), or torch.jit.load(path) for --format torchscript.
    """

    def body() -> None:
        from trainkit.tools.export import export as run_export

        result = run_export(ckpt, output, fmt)
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
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        # a worker under torchrun: record an unexpected exception's traceback for its summary
        from torch.distributed.elastic.multiprocessing.errors import record

        record(app)()
    else:
        app()


if __name__ == "__main__":
    main()
