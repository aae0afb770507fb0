"""centernet.runtime.ort_session: ONNX Runtime sessions, and runs that Ctrl-C stops mid-batch."""
import os
import signal
import threading

import numpy as np
import onnxruntime as ort
import pytest

from centernet.runtime.ort_session import make_session, run_session


class RecordingSession(ort.InferenceSession):
    """An ONNX Runtime session that notes when its run starts and how it ends."""

    def __init__(self, path):
        super().__init__(str(path), providers=["CPUExecutionProvider"])
        self.started, self.error = threading.Event(), None

    def run(self, *args):
        self.started.set()
        try:
            return super().run(*args)
        except Exception as e:  # noqa: BLE001 - recorded for the test
            self.error = e
            raise


def ctrl_c_once_started(session, after=0.2):
    """SIGINT to this process `after` seconds into the session's run, as a terminal's Ctrl-C."""
    def fire():
        if session.started.wait(60):
            threading.Event().wait(after)
            os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=fire, daemon=True).start()


@pytest.mark.slow
def test_ctrl_c_stops_an_onnxruntime_run_mid_batch(ctdet_onnx):
    # A batch of 8 at 512x512 takes seconds on a CPU; the Ctrl-C comes 0.2 s
    # in. ONNX Runtime must fail the run by its terminate flag (not finish
    # the batch) and the KeyboardInterrupt must reach the caller.
    session = RecordingSession(ctdet_onnx)
    batch = np.zeros((8, 3, 512, 512), np.float32)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        ctrl_c_once_started(session)
        with pytest.raises(KeyboardInterrupt):
            run_session(session, batch)
    finally:
        signal.signal(signal.SIGINT, outer)
    assert session.error is not None and "terminate" in str(session.error), session.error
    outputs = run_session(session, batch[:1])  # the session still works
    assert [o.shape for o in outputs] == [(1, 80, 128, 128), (1, 2, 128, 128), (1, 2, 128, 128)]


def test_ort_session_declares_what_its_graph_says(ctdet_onnx, ctdet_onnx_flip_dynamic, ordinary_onnx):
    from centernet.runtime.ort_session import OrtSession
    from centernet.runtime.session import Capabilities
    fixed = OrtSession(make_session(ctdet_onnx, threads=1))
    assert fixed.capabilities == Capabilities(input_size=(512, 512), random_weights=True)  # the fixtures' weights
    flip = OrtSession(make_session(ctdet_onnx_flip_dynamic, threads=1))
    assert flip.capabilities == Capabilities(input_size=None, flip_in_graph=True, random_weights=True)
    ordinary = OrtSession(make_session(ordinary_onnx, threads=1))
    assert ordinary.capabilities == Capabilities(input_size=(512, 512), random_weights=False)
    outputs = fixed.run(np.zeros((1, 3, 512, 512), np.float32))
    assert [o.shape for o in outputs] == [(1, c, 128, 128) for c in (80, 2, 2)]
    assert [o.shape[1:] for o in outputs] == fixed.capabilities.output_shapes((512, 512))


def test_runs_outside_the_main_thread_call_the_session_directly(ctdet_onnx):
    session = make_session(ctdet_onnx, threads=1)
    got = []
    thread = threading.Thread(target=lambda: got.append(run_session(session, np.zeros((1, 3, 512, 512), np.float32))))
    thread.start()
    thread.join()
    assert len(got) == 1 and got[0][0].shape == (1, 80, 128, 128)


def test_unknown_device_and_missing_file_are_user_errors(tmp_path):
    from centernet.errors import UserError
    with pytest.raises(UserError, match="unknown device"):
        make_session(tmp_path / "m.onnx", device="npu")
    with pytest.raises(UserError, match="model file not found"):
        make_session(tmp_path / "m.onnx")
    assert "CPUExecutionProvider" in ort.get_available_providers()
