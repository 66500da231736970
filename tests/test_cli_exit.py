"""After a CUDA profile the CLI ends with os._exit (CUPTI's exit-time teardown aborts the process otherwise, see
quantdeploy/cli/__init__.py): the exit code and the buffered output must survive it. And Ctrl-C stops a command
whatever SIGINT disposition its process inherited."""
import subprocess
import sys

from conftest import REPO

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


def test_ctrl_c_stops_a_command_started_with_sigint_ignored():
    """A process started with SIGINT ignored (a script's background job, some CI runners) keeps it ignored across
    exec: quantdeploy still stops on Ctrl-C (here `chat` waiting for its prompt on a pipe nobody writes to)."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "quantdeploy", "chat", "--max-tokens", "4"], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(4)  # past the imports, reading stdin
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err
