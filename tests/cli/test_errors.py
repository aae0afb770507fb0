"""centernet.errors.cli: one line for a user error, a truthful one for Ctrl-C."""
import os
import signal
import subprocess
import sys
import time

import pytest

from centernet.errors import Interrupted, UserError, cli, sigint_blocked
from conftest import HANG, ctrl_c, kill_group, start_script, wait_until_loaded


def _exit_of(main, capsys):
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


def test_user_error_is_one_line_and_exit_2(capsys):
    @cli
    def main():
        raise UserError("x.json: not valid JSON")
    assert _exit_of(main, capsys) == (2, "error: x.json: not valid JSON\n")


@pytest.mark.slow
def test_ctrl_c_message_is_the_scripts_own_or_the_librarys(capsys):
    @cli(interrupted="nothing written; run the same command again")
    def plain():
        raise KeyboardInterrupt
    assert _exit_of(plain, capsys) == (130, "interrupted: nothing written; run the same command again\n")

    @cli(interrupted="nothing written")
    def detailed():
        raise Interrupted("3 of 8 bins are finished and kept in prep")
    assert _exit_of(detailed, capsys) == (130, "interrupted: 3 of 8 bins are finished and kept in prep\n")


def test_a_driver_s_resume_hint_replaces_the_script_s(capsys, monkeypatch):
    """run_all.sh sets CENTERNET_RESUME_HINT: its stages say what they kept,
    then the driver's way to go on instead of their own command's."""
    @cli(interrupted="nothing written", resume="run the same command again")
    def plain():
        raise KeyboardInterrupt

    @cli
    def detailed():
        raise Interrupted("3 of 8 bins are finished and kept in prep", "to resume, run: x --skip-existing")
    monkeypatch.setenv("CENTERNET_RESUME_HINT", "run the same run_all.sh command again")
    assert _exit_of(plain, capsys) == (130, "interrupted: nothing written; run the same run_all.sh command again\n")
    assert _exit_of(detailed, capsys) == (130, "interrupted: 3 of 8 bins are finished and kept in prep; "
                                               "run the same run_all.sh command again\n")
    monkeypatch.delenv("CENTERNET_RESUME_HINT")
    assert _exit_of(detailed, capsys) == (130, "interrupted: 3 of 8 bins are finished and kept in prep; "
                                               "to resume, run: x --skip-existing\n")


def test_handler_is_back_after_main_returns():
    # Called from other code (not as a script), main() leaves SIGINT as it found it.
    seen = []

    @cli
    def main():
        seen.append(signal.getsignal(signal.SIGINT))
        return 0
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        assert main() == 0
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
    assert seen[0] is not signal.default_int_handler  # a first Ctrl-C raises, later ones are ignored

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # started with Ctrl-C ignored (nohup, &): left so
    try:
        assert main() == 0 and seen[1] is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outer)


@pytest.mark.slow
def test_ctrl_c_while_workers_start_waits_for_the_end_of_the_block():
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigint_blocked():
                child = subprocess.run([sys.executable, "-c", "print(open('/proc/self/status').read())"],
                                       capture_output=True, text=True, check=True)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # a handler would have run by now
                reached.append(True)
    finally:
        signal.signal(signal.SIGINT, outer)
    assert reached  # the block ran to its end, then the Ctrl-C was raised
    blocked = int(child.stdout.split("SigBlk:")[1].split()[0], 16)
    assert blocked & (1 << (signal.SIGINT - 1))  # and a process started in it has SIGINT blocked


@pytest.mark.slow
@pytest.mark.parametrize("script", ["CenterNet_pth2onnx.py", "CenterNet_benchmark.py"])
def test_ctrl_c_while_torch_loads_ends_quietly(script, upstream_checkpoint, tmp_path):
    # These scripts import torch at the top (a second or more), before
    # main() and its Ctrl-C handling run: the Ctrl-C lands in that import.
    args = {"CenterNet_pth2onnx.py": [upstream_checkpoint, tmp_path / "CenterNet.onnx"],
            "CenterNet_benchmark.py": ["--quick", "--weights", upstream_checkpoint]}[script]
    proc = start_script(script, *args, cwd=tmp_path)
    wait_until_loaded(proc, "libtorch_cpu")
    ctrl_c(proc)
    try:
        _, err = proc.communicate(timeout=HANG)
    finally:
        kill_group(proc)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.startswith("interrupted: ") and err.count("\n") == 1, err
