"""The study's bookkeeping, without training: `trials` is one total for every process, a run whose
process died is failed and queued again on its own folder, a different sweep cannot take over a study."""

from __future__ import annotations

import threading

import pytest
from sweep_helpers import write_sweep

from trainkit.errors import TrainkitError, UsageError
from trainkit.sweeps.spec import load_sweep
from trainkit.sweeps.study import MAX_ATTEMPTS, RunLock, Study, quiet_optuna

PARAMS = {"optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 0.1}}


def _sweep(tmp_path, **spec):
    return load_sweep(write_sweep(tmp_path, **{"params": PARAMS, "trials": 3, **spec}))


def _claim(study, total):
    """What one slot of the driver does under the claim lock."""
    with study.claim_lock():
        plan = study.plan(total)
        if plan != "claim":
            return plan, None, None, None
        trial, root = study.ask()
        lock = RunLock(study.folder, root)
        assert lock.acquire()
        return plan, trial, root, lock


def test_workers_claiming_side_by_side_run_exactly_trials(tmp_path):
    """Eight workers, each with its own connection to the study, claim and finish at once:
    the study ends with exactly `trials` complete runs (counting and asking happen under one lock)."""
    sweep = _sweep(tmp_path, trials=12)
    with quiet_optuna():
        studies = [Study(sweep) for _ in range(8)]
        errors = []

        def work(study):
            try:
                while True:
                    plan, trial, _, lock = _claim(study, sweep.trials)
                    if plan == "done":
                        return
                    if plan == "claim":
                        study.complete(trial, 0.5)
                        lock.release()
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,)) for s in studies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        runs = Study(sweep).runs()
    assert errors == []
    assert [r.status for r in runs] == ["complete"] * 12
    assert [r.root for r in runs] == list(range(12))


def test_a_run_whose_process_died_is_queued_again_on_its_own_folder(tmp_path):
    sweep = _sweep(tmp_path, trials=1)
    with quiet_optuna():
        first, second = Study(sweep), Study(sweep)
        _, trial, root, lock = _claim(first, 1)
        assert root == 0
        assert _claim(second, 1)[0] == "wait"  # alive: its lock is held
        lock.release()  # the process died: the kernel frees its lock
        plan, retry, retry_root, retry_lock = _claim(second, 1)
        assert plan == "claim" and retry.number == 1 and retry_root == 0
        assert retry.params == trial.params  # the same run, resumed from its folder
        second.complete(retry, 0.25)
        retry_lock.release()
        runs = second.runs()
    assert len(runs) == 1 and runs[0].status == "complete" and [t.number for t in runs[0].attempts] == [0, 1]
    assert runs[0].attempts[0].state.name == "FAIL"


def test_a_run_stopped_again_and_again_is_given_up(tmp_path):
    sweep = _sweep(tmp_path, trials=1)
    with quiet_optuna():
        study = Study(sweep)
        for _ in range(MAX_ATTEMPTS):
            plan, trial, root, lock = _claim(study, 1)
            assert plan == "claim" and root == 0
            study.interrupted(trial, "its process was killed by SIGKILL")
            lock.release()
        assert _claim(study, 1)[0] == "done"
        (run,) = study.runs()
    assert run.status == "failed"
    assert run.latest.user_attrs["trainkit.error"] == "given up: stopped 4 times (its process was killed by SIGKILL)"


def test_a_different_sweep_cannot_continue_the_study(tmp_path):
    with quiet_optuna():
        Study(_sweep(tmp_path))
        changed = _sweep(tmp_path, params={"optimizer.lr": {"type": "loguniform", "low": 1e-5, "high": 0.1}})
        with pytest.raises(UsageError) as caught:
            Study(changed)
        Study(_sweep(tmp_path, trials=5))  # more trials: the same sweep, continued further
    assert str(caught.value) == (
        f"the study 'search' in {tmp_path / 'ckpt' / 'search' / 'study.journal'} was started by a different sweep "
        "(params.optimizer.lr.low differ); keep the sweep as it was, or give this one another name"
    )


@pytest.mark.parametrize(
    ("sampler", "pruner"),
    [
        ("tpe", {"name": "median", "warmup_epochs": 1}),
        ("random", {"name": "hyperband", "min_epochs": 1}),
        ("grid", "none"),
    ],
)
def test_each_sampler_and_pruner_asks_and_prunes(tmp_path, sampler, pruner):
    params = {
        "optimizer.lr": {"type": "choice", "values": [0.1, 0.01]},
        "model.hidden": {"type": "int", "low": 4, "high": 8},
    }
    if sampler == "grid":
        params["model.hidden"] = {"type": "choice", "values": [4, 8]}
    sweep = _sweep(tmp_path, params=params, sampler=sampler, pruner=pruner, trials=2)
    with quiet_optuna():
        study = Study(sweep)
        for value in (0.5, 0.9):
            _, trial, _, lock = _claim(study, 2)
            assert set(trial.params) == {"optimizer.lr", "model.hidden"}
            assert isinstance(study.report(trial, 1, value), bool)  # the pruner answers
            study.complete(trial, value)
            lock.release()
        assert _claim(study, 2)[0] == "done"


def test_a_journal_record_cut_short_is_dropped_and_the_study_goes_on(tmp_path, caplog):
    """A writer stopped mid-append leaves a last record without its newline; Optuna glued the next
    record onto it and the study could not be read again (a JSONDecodeError traceback)."""
    sweep = _sweep(tmp_path, trials=4)
    with quiet_optuna():
        study = Study(sweep)
        for _ in range(2):
            _, trial, _, lock = _claim(study, sweep.trials)
            study.complete(trial, 0.5)
            lock.release()
        journal = sweep.folder / "study.journal"
        whole = journal.read_bytes()
        journal.write_bytes(whole + b'{"op_code":4,"worker_id":"gone","trial_id":2,"param_na')
        study = Study(sweep)  # and a third trial is asked for, written after the cut
        _, trial, root, lock = _claim(study, sweep.trials)
        study.complete(trial, 0.25)
        lock.release()
        runs = Study(sweep).runs()
    assert [(r.root, r.status) for r in runs] == [(0, "complete"), (1, "complete"), (2, "complete")]
    assert journal.read_bytes().startswith(whole)
    assert any("its last record was cut short" in r.getMessage() for r in caplog.records)


def test_a_damaged_journal_record_is_one_line_naming_the_journal(tmp_path):
    sweep = _sweep(tmp_path, trials=2)
    with quiet_optuna():
        Study(sweep)
        journal = sweep.folder / "study.journal"
        journal.write_bytes(journal.read_bytes() + b'{"op_code":5,"worker\n')
        with pytest.raises(TrainkitError, match=rf"^cannot open the study in {journal}: Invalid control character"):
            Study(sweep)
