"""The Ascend backend: an .om model (ATC's compile of the Ascend export) run
through ais_bench's Python interface, behind the Session interface.

ais_bench and its aclruntime come with the Ascend toolkit, not from PyPI; they
are imported only when an .om model is opened. The staged recipe's
run_infer.sh keeps calling `python -m ais_bench` for its file layout; this
session is what lets the predictor, and so the streaming evaluation, the demo
and the benchmark, run an .om as they run an .onnx.
"""
import numpy as np

from centernet.errors import UserError
from centernet.runtime.session import Capabilities, Session, heads_from_channels


def _dims(shape):
    """A shape as ais_bench reports it, with -1 (or non-integers) as None."""
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


class AisBenchSession(Session):
    """ais_bench's InferSession on one .om file and one NPU.

    flip_in_graph: the .om was compiled from an export with --flip (an .om
    keeps no ONNX metadata, so the caller says so; convert_om.sh's ONNX
    input tells)."""

    def __init__(self, model, device_id=0, flip_in_graph=False):
        try:
            from ais_bench.infer.interface import InferSession
        except ImportError:
            raise UserError(f"{model}: an .om model needs ais_bench and aclruntime (the Ascend toolkit's "
                            "packages)") from None
        self.name = str(model)
        self.inner = InferSession(device_id, str(model))
        shape = _dims(self.inner.get_inputs()[0].shape)
        hw = tuple(shape[2:4])
        self._dynamic = None in hw
        self._caps = Capabilities(
            input_size=None if self._dynamic else hw, static_batch=shape[0], flip_in_graph=flip_in_graph,
            heads=heads_from_channels([_dims(o.shape)[1] for o in self.inner.get_outputs()]),
            facts=None)  # an .om records no facts: the ONNX file it came from does

    @property
    def capabilities(self):
        return self._caps

    def run(self, batch):
        x = np.ascontiguousarray(batch, dtype=np.float32)
        # An .om with dynamic image size gears takes each input's height and width as it comes.
        outputs = self.inner.infer([x], mode="dymhw" if self._dynamic else "static")
        return [np.asarray(o, dtype=np.float32) for o in outputs]

    def describe(self):
        return {"backend": "ais_bench", "model": self.name}
