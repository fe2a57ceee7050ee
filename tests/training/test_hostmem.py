"""Host memory: glibc's malloc is tuned only when asked, once, and the change is real.

Each case runs in a fresh interpreter, because the setting is process-wide by nature.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import subprocess_env, tiny_config, write_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux only")

# mallinfo2().hblks counts the blocks malloc served with mmap. A 31 MiB block is one of them
# under glibc's default threshold (128 KiB, raised dynamically to the size of each mmapped
# block freed, so one probe per process) and is not once trainkit has raised the threshold
# to 32 MiB.
PROBE = textwrap.dedent("""
    import ctypes, logging, sys
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def mmapped_by_a_big_block():
        before = libc.mallinfo2().hblks
        block = libc.malloc(31 << 20)
        during = libc.mallinfo2().hblks
        libc.free(block)
        return during - before

    logging.basicConfig(level=logging.INFO, format="LOG %(message)s", stream=sys.stdout)
""")


def _python(code: str, cwd=None) -> str:
    run = subprocess.run(
        [sys.executable, "-c", PROBE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
        cwd=cwd,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_keep_changes_malloc_once_and_a_second_call_is_a_no_op():
    out = _python("""
        from trainkit.training import hostmem
        hostmem.set_default("keep")  # what the trainkit command does
        print("applied", hostmem.apply("keep"), hostmem.apply("keep"), hostmem.apply(None))
        print("after", mmapped_by_a_big_block())
        print("note", hostmem.note())
    """)
    assert "after 0" in out
    assert "applied True True True" in out
    assert "LOG host memory" not in out  # not a log line of its own: the run's start line says it
    assert "note host memory: freed blocks kept for reuse" in out


def test_default_and_unset_leave_malloc_alone_outside_the_cli():
    out = _python("""
        from trainkit.training import hostmem
        print("applied", hostmem.apply("default"), hostmem.apply(None))
        print("after", mmapped_by_a_big_block())
        print("note", hostmem.note())
    """)
    assert "applied False False" in out and "after 1" in out and "note None" in out


@pytest.mark.parametrize("setting,mmapped", [(None, 1), ("keep", 0), ("default", 1)])
def test_the_python_api_leaves_malloc_alone_unless_the_config_asks(tmp_path, setting, mmapped):
    config = tiny_config(tmp_path, trainer={"epochs": 1, "host_memory": setting})
    out = _python(f"""
        import trainkit
        trainkit.train({config!r}, quiet=True)
        print("api", mmapped_by_a_big_block())
    """)
    assert f"api {mmapped}" in out


@pytest.mark.parametrize("override,mmapped", [([], 0), (["trainer.host_memory=default"], 1)])
def test_the_cli_keeps_freed_memory_on_the_cpu_unless_told_not_to(tmp_path, override, mmapped):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, trainer={"epochs": 1}))
    out = _python(f"""
        from trainkit.cli import app
        try:
            app(["train", {str(config)!r}, "--quiet", *{override!r}])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print("cli", mmapped_by_a_big_block())
    """)
    assert f"cli {mmapped}" in out
