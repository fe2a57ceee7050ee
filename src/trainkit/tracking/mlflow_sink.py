"""MLflow tracking: a run's config, metrics, tags and checkpoints in an MLflow run (rank 0 only).

    logging: {mlflow: true}            # or {tracking_uri: ..., experiment: ..., log_checkpoints: best|all|none}

What goes where:
- params: the resolved config, flattened (`optimizer.lr`, `model.channels`); a value over
  MLflow's length limit is cut, with a note, never an error.
- metrics: each "train" record as `train/<key>` and each epoch record as `epoch/<key>`, at its
  optimizer step (the names TensorBoard gets too).
- tags: `trainkit.version`, `trainkit.run_dir`, the working folder's git commit as
  `mlflow.source.git.commit`, and `mlflow.parentRunId` for a sweep's trials.
- artifacts: config.yaml at the start; best.pt once the run completes (`best`), or every
  checkpoint as it is saved plus best.pt (`all`).

A resumed run continues the same MLflow run: its id travels in every checkpoint
(`trackers["mlflow"]`). MLflow's metric history cannot be edited, and a kill -9 can come
after records that the checkpoint being resumed does not cover; so on reopening, the last
step MLflow holds for each metric is read back and the resumed run skips what is already
there. Resume is bit-identical, so those are exactly the values it would log again.

All calls to MLflow run in a background thread (_worker.py): a slow or vanished server
never stalls or stops training; it is retried, and the end of the run says what was lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from trainkit._version import __version__
from trainkit.config._sections import MlflowConfig
from trainkit.errors import TrainkitError
from trainkit.runfolder.layout import BEST, CONFIG, MLFLOW_STAGING
from trainkit.tracking._params import flat_params, git_commit, safe_name, shorten
from trainkit.tracking._worker import RECORDS, Worker, first_line

log = logging.getLogger("trainkit")

DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow's own default since 3.7: a file in the working folder
STATUS = {"complete": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
OPEN_WAIT = 30.0  # seconds the first checkpoint waits at most for the MLflow run's id
RETRY_SECONDS = 30.0  # between tries while MLflow is away
PATIENCE = {"complete": 120.0}  # seconds without progress before the end stops waiting for MLflow
PATIENCE_OTHERWISE = 20.0  # interrupted (maybe preempted, with a deadline) or failed: do not linger
# MLflow retries a failed HTTP call itself, 7 times with growing pauses: about 4 minutes before
# the call returns, while trainkit cannot tell that the server is away (so the first checkpoint
# waited OPEN_WAIT for the run's id, and the end PATIENCE, for a server that was never up).
# trainkit's worker tries again every RETRY_SECONDS anyway: MLflow's own retries are cut to 2,
# 1 s apart, unless these variables are set (the user's values win).
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri)


def tracking_uri(settings: MlflowConfig) -> str:
    return settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def experiment_name(settings: MlflowConfig) -> str:
    return settings.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"


def _limits() -> tuple[int, int, int]:
    """MLflow's (key length, param value length, params per batch)."""
    try:
        from mlflow.utils import validation as v

        return v.MAX_ENTITY_KEY_LENGTH, v.MAX_PARAM_VAL_LENGTH, v.MAX_PARAMS_TAGS_PER_BATCH
    except (ImportError, AttributeError):  # older MLflow: its long-standing smallest limits
        return 250, 500, 100


class _Rejected(Exception):
    """Something MLflow will refuse however often it is asked (not an outage)."""


def _permanent(exc: BaseException) -> bool:
    if isinstance(exc, (_Rejected, FileNotFoundError)):
        return True
    status = getattr(exc, "get_http_status_code", None)
    code = status() if callable(status) else 500
    return 400 <= code < 500 and code not in (408, 429)


def _experiment_id(client: Any, name: str) -> str:
    for _ in range(2):  # another trial may create it at the same moment
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage != "active":
                raise _Rejected(
                    f"experiment '{name}' is deleted; restore it or choose another logging.mlflow.experiment"
                )
            return experiment.experiment_id
        try:
            return client.create_experiment(name)
        except Exception as exc:
            if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise
    raise _Rejected(f"experiment '{name}' cannot be created")


def _metrics(record: dict[str, Any]) -> list[tuple[str, float, int]]:
    prefix = "train" if record.get("type") == "train" else "epoch"
    return [
        (f"{prefix}/{key}", float(value), int(record["step"]))
        for key, value in record.items()
        if key not in ("type", "step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool)
    ]


class MlflowSink:
    """A training.session.Sink that tracks one run in MLflow."""

    state_key = "mlflow"

    def __init__(self, settings: MlflowConfig, saved: dict[str, Any] | None = None, parent_run_id: str | None = None):
        self.settings, self.uri, self.parent_run_id = settings, tracking_uri(settings), parent_run_id
        self.saved = saved or {}
        # the run to continue: only where it was tracked (another store does not hold it)
        self.run_id: str | None = self.saved.get("run_id") if self.saved.get("tracking_uri") == self.uri else None
        self._opened = threading.Event()
        self._open_tried = threading.Event()  # the first try to open ended, opened or not
        self._waited = False
        self._logged: dict[str, int] = {}  # metric -> last step MLflow already holds (a resumed run)
        self._known_params: dict[str, str] = {}  # the params a reopened run already has
        self._worker: Worker | None = None
        self._client: Any = None
        self.run_dir = Path(".")

    # -- the Sink protocol (training thread)
    def start(self, run_dir: Path, config: dict[str, Any], step: int) -> None:
        if self.saved.get("run_id") and self.run_id is None:
            log.warning(
                "MLflow: this run was tracked at %s and now goes to %s: it starts a new MLflow run there",
                self.saved.get("tracking_uri"),
                self.uri,
            )
        self.run_dir = Path(run_dir).resolve()
        shutil.rmtree(self.run_dir / MLFLOW_STAGING, ignore_errors=True)  # uploads a killed run left
        self._worker = Worker(f"MLflow ({self.uri})", self._handle, _permanent, RETRY_SECONDS)
        self._worker.submit("open", (config, step), "the MLflow run")

    def record(self, record: dict[str, Any]) -> None:
        metrics = _metrics(record)
        if metrics and self._worker is not None:
            stamp = int(time.time() * 1000)
            self._worker.submit(RECORDS, [(key, value, stamp, step) for key, value, step in metrics], "metric records")

    def checkpoint(self, path: Path, is_best: bool, step: int) -> None:
        if self.settings.log_checkpoints != "all" or self._worker is None:
            return
        # a hard link: the rotation may delete the step file before the upload reaches it
        staging = self.run_dir / MLFLOW_STAGING
        staged = staging / path.name
        try:
            staging.mkdir(exist_ok=True)
            staged.unlink(missing_ok=True)
            os.link(path, staged)
        except OSError:
            staged = path  # no hard links here: upload from the step file while it exists
        self._worker.submit("artifact", (staged, "checkpoints", staged != path), path.name)

    def finish(self, status: str, message: str | None) -> None:
        if self._worker is None:
            return
        best = self.run_dir / BEST
        if status == "complete" and self.settings.log_checkpoints != "none" and best.exists():
            self._worker.submit("artifact", (best, None, False), BEST)
        self._worker.submit("finish", (STATUS.get(status, "FAILED"), message), "the run's final status")
        self._worker.close(PATIENCE.get(status, PATIENCE_OTHERWISE))
        shutil.rmtree(self.run_dir / MLFLOW_STAGING, ignore_errors=True)
        lost = self._worker.lost
        if lost:
            counted = [what if n == 1 and what != "metric records" else f"{n} {what}" for what, n in lost.items()]
            log.warning(
                "MLflow (%s) did not get: %s (%s)", self.uri, ", ".join(counted), self._worker.first_error or "no reply"
            )

    def state(self) -> dict[str, Any]:
        """Saved in each checkpoint. The first one waits for the run's id (MLflow is being
        imported and reached meanwhile), unless the first try to open the run failed."""
        if not self._opened.is_set() and not self._waited and self._worker is not None:
            self._waited = True
            deadline = time.monotonic() + OPEN_WAIT
            while not self._opened.wait(0.05) and not self._open_tried.is_set() and time.monotonic() < deadline:
                pass
        return {"run_id": self.run_id, "tracking_uri": self.uri} if self.run_id else {}

    # -- the background thread
    def _handle(self, kind: str, payloads: list[Any]) -> None:
        if kind == "open":
            try:
                self._open(*payloads[0])
            finally:  # failed (rejected, or the server away) or not: the first checkpoint need not wait
                self._open_tried.set()
            return
        if self._client is None or self.run_id is None or not self._opened.is_set():
            raise _Rejected("there is no MLflow run to log to")
        if kind == RECORDS:
            self._log_metrics([m for metrics in payloads for m in metrics])
        elif kind == "artifact":
            path, folder, staged = payloads[0]
            self._client.log_artifact(self.run_id, str(path), folder)
            if staged:
                with contextlib.suppress(OSError):
                    Path(path).unlink()
        elif kind == "finish":
            status, message = payloads[0]
            if message:  # why it stopped: "interrupted by SIGUSR1; checkpoint saved at step 40", an error
                self._client.set_tag(self.run_id, "trainkit.message", shorten(message, 5000))
            self._client.set_terminated(self.run_id, status)

    def _log_metrics(self, metrics: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        key_limit = _limits()[0]
        fresh = []
        for key, value, stamp, step in metrics:
            name = safe_name(key, key_limit)
            if step > self._logged.get(name, -1):  # a resumed run: MLflow has this step already
                fresh.append(Metric(name, value, stamp, step))
        for i in range(0, len(fresh), 1000):
            self._client.log_batch(self.run_id, metrics=fresh[i : i + 1000])
        for metric in fresh:
            self._logged[metric.key] = max(self._logged.get(metric.key, -1), metric.step)

    def _open(self, config: dict[str, Any], step: int) -> None:
        if self._client is None:
            self._client = _client(self.uri)
        client = self._client
        if self.run_id is not None and not self._opened.is_set():
            self._known_params = self._continue(client, step)
        if self.run_id is None:
            tags = {"trainkit.version": __version__, "trainkit.run_dir": str(self.run_dir)}
            commit = git_commit(Path.cwd())
            if commit:
                tags["mlflow.source.git.commit"] = commit
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            experiment_id = _experiment_id(client, experiment_name(self.settings))
            run = client.create_run(experiment_id, tags=tags, run_name=str(config.get("name") or "trainkit"))
            self.run_id = run.info.run_id
        self._opened.set()  # the id is known: checkpoints may carry it
        self._log_params(client, config, self._known_params, step)
        config_file = self.run_dir / CONFIG
        if config_file.exists():
            client.log_artifact(self.run_id, str(config_file))

    def _continue(self, client: Any, step: int) -> dict[str, str]:
        """Reopen the saved run; returns its params. Clears run_id if MLflow no longer has it."""
        try:
            run = client.get_run(self.run_id)
        except Exception as exc:
            if getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise  # an outage: the whole open is tried again
            run = None
        if run is None or run.info.lifecycle_stage != "active":
            log.warning("MLflow: run %s is not in %s (deleted?); this run goes on in a new one", self.run_id, self.uri)
            self.run_id = None
            return {}
        client.update_run(self.run_id, status="RUNNING")
        for key in run.data.metrics:
            history = client.get_metric_history(self.run_id, key)
            self._logged[key] = max((m.step for m in history), default=-1)
        client.set_tag(self.run_id, "trainkit.resumed_at_step", str(step))
        return dict(run.data.params)

    def _log_params(self, client: Any, config: dict[str, Any], known: dict[str, str], step: int) -> None:
        from mlflow.entities import Param, RunTag

        key_limit, value_limit, per_batch = _limits()
        params = flat_params(config, key_limit, value_limit)
        # MLflow params cannot change: a value changed on resume is recorded as a tag
        new = [Param(k, v) for k, v in params.items() if k not in known]
        changed = [
            RunTag(
                safe_name(f"changed_on_resume.{k}", key_limit), shorten(f"{v} (from step {step}; was {known[k]})", 5000)
            )
            for k, v in params.items()
            if k in known and known[k] != v
        ]
        for i in range(0, len(new), per_batch):
            client.log_batch(self.run_id, params=new[i : i + per_batch])
        for i in range(0, len(changed), per_batch):
            client.log_batch(self.run_id, tags=changed[i : i + per_batch])


def start_parent_run(
    settings: MlflowConfig, name: str, run_id: str | None = None, tags: dict[str, str] | None = None
) -> str:
    """Create the parent run of a sweep (or reopen it, given its id) and return its id.

    Trials whose process has TRAINKIT_MLFLOW_PARENT_RUN_ID=<id> in its environment (or whose
    MlflowSink gets parent_run_id=<id>) become its children. Synchronous; raises TrainkitError."""
    try:
        client = _client(tracking_uri(settings))
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return run_id
        all_tags = {"trainkit.version": __version__, **(tags or {})}
        commit = git_commit(Path.cwd())
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        run = client.create_run(_experiment_id(client, experiment_name(settings)), tags=all_tags, run_name=name)
        return str(run.info.run_id)
    except Exception as exc:
        raise TrainkitError(
            f"MLflow ({tracking_uri(settings)}): cannot start the sweep's run: {first_line(exc)}"
        ) from None


def end_parent_run(settings: MlflowConfig, run_id: str, status: str = "FINISHED") -> None:
    """Mark a sweep's parent run FINISHED (or FAILED / KILLED)."""
    try:
        _client(tracking_uri(settings)).set_terminated(run_id, status)
    except Exception as exc:
        raise TrainkitError(
            f"MLflow ({tracking_uri(settings)}): cannot end the sweep's run: {first_line(exc)}"
        ) from None
