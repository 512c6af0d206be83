"""The stop-signal handling shared by ``basicsr train`` and ``constyle train``: the first SIGINT /
SIGTERM is only recorded (the trainer saves after the current iteration), and the handlers the
process had come back at once, so a second Ctrl-C raises KeyboardInterrupt immediately."""
from __future__ import annotations

import os
import signal

import pytest

from constyle_plugin.interrupt import StopSignals, TrainingStopped


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler, as in a command started from a shell (pytest-xdist workers ignore
    SIGINT)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_the_first_signal_is_recorded_and_a_second_ctrl_c_stops_at_once(capfd, python_sigint):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopSignals("basicsr train") as stop:
        assert not stop.requested and not stop.agreed()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT and stop.agreed()
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]  # Python's KeyboardInterrupt
        assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    err = capfd.readouterr().err
    assert "basicsr train: SIGINT received: finishing the current iteration" in err
    assert "Ctrl-C again stops at once" in err
    assert {s: signal.getsignal(s) for s in before} == before


def test_sigterm_is_recorded_and_handlers_come_back_on_exit(capfd):
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals("constyle train") as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert "SIGTERM again stops at once" in capfd.readouterr().err
    assert TrainingStopped(signal.SIGTERM, 3, []).exit_code == 143
    assert TrainingStopped(signal.SIGINT, 3, []).exit_code == 130
