"""After a CUDA profile the CLI ends with os._exit (CUPTI's exit-time teardown aborts the process otherwise, see
quantdeploy/cli/__init__.py): the exit code and the buffered output must survive it."""
import subprocess
import sys

CODE = """
import sys
import quantdeploy.bench.kernels as k
from quantdeploy.cli import _exit
k.CUPTI_USED = {used}
sys.stdout.write("report")  # buffered, no newline: lost if os._exit ran without a flush
import atexit
atexit.register(lambda: print("atexit ran", file=sys.stderr))
_exit({code!r})
"""


def run(used: bool, code):
    return subprocess.run([sys.executable, "-c", CODE.format(used=used, code=code)], capture_output=True, text=True,
                          timeout=120)


def test_after_a_profile_the_exit_code_and_output_survive_and_the_teardown_is_skipped():
    p = run(True, 3)
    assert (p.returncode, p.stdout) == (3, "report") and "atexit ran" not in p.stderr
    p = run(True, "error: something")
    assert (p.returncode, p.stdout) == (1, "report") and "error: something" in p.stderr
    p = run(True, None)
    assert p.returncode == 0


def test_without_a_profile_the_process_exits_normally():
    p = run(False, 2)
    assert (p.returncode, p.stdout) == (2, "report") and "atexit ran" in p.stderr
