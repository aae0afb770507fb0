"""The PyTorch backend: the .pth checkpoint run by PyTorch itself, on CPU or CUDA.

`TorchSession` implements the Session interface (runtime/session.py), so the
predictor and every runner take it as they take ONNX Runtime: a float32
(N, 3, H, W) numpy batch in, [hm, wh, reg] float32 numpy arrays out, the same
tensors as the ONNX export gives; it also takes warped uint8 images and
decodes on its device where its options say so (its Capabilities).

Each technique that makes the network fast on a GPU is a switch of
`TorchOptions`, so that a benchmark can measure what each one buys:
- precision: fp32 (strict: no TF32), tf32 (CUDA's TensorFloat-32 for
  convolutions and matmuls), fp16, bf16;
- cast: "autocast" (torch.autocast: convolutions in fp16/bf16, numerically
  sensitive ops in fp32) or "model" (the whole network converted to
  fp16/bf16); either way the DCN sampling stays in fp32 (dcn_kernels.KernelDCN)
  and, with fp32_heads, the heads' final 1x1 convolutions run in fp32, so the
  logits the decoder ranks are not rounded to 8 (bf16) or 11 (fp16) bits;
- fuse_bn: every BatchNorm folded into the convolution before it;
- channels_last: NHWC activations (what tensor-core convolutions want);
- compile: torch.compile (optional; Inductor needs a C++ compiler on CPU and
  Triton on CUDA);
- cuda_graphs: one CUDA graph per input shape, replayed (CUDA only);
- pin_memory: page-locked host buffers for the copies in and out (CUDA);
- warped_input: the streaming evaluation's workers send the warped uint8
  image (a quarter of the float32 input's bytes through their pipes and to
  the GPU) and the normalisation runs on the device (run_warped), to the
  same float32 bits as on the CPU;
- device_decode: the streaming evaluation decodes on the device
  (decode_ctdet_torch, as upstream decodes on its GPU) and copies back only
  the K detections per input, instead of the full outputs (5.5 MB per
  512x512 input) for numpy to decode on one CPU thread; a flip test then
  mirrors and averages on the device too (combine_flip_torch), so its
  inputs also go over as warped uint8 images, once;
- dcn: the deformable convolution's kernel (dcn_kernels: ours, torchvision, auto).
"""
import contextlib
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch


from centernet.model.checkpoint import is_random
from centernet.model.networks import model_facts
from centernet.model.dcn_kernels import tf32_allowed
from centernet.errors import UserError
from centernet.runtime.session import Capabilities, Session, heads_from_channels
from centernet.runtime.torch_decode import combine_flip_torch, decode_ctdet_torch
from centernet.runtime.torch_model import TorchOptions, prepare_model

logger = logging.getLogger(__name__)


class TorchSession(Session):
    """A ctdet network (any of upstream's) in PyTorch behind the Session interface.

    model: an nn.Module (copied, never changed) or the path of an upstream
    checkpoint. input_size: (H, W) the inputs must have, like the default
    ONNX export's fixed 512x512, or None for any size (multiples of 32)."""

    def __init__(self, model, options=None, input_size=(512, 512), name=None, facts=None):
        self.options = (options or TorchOptions()).resolved()
        if isinstance(model, (str, Path)):
            from centernet.model.checkpoint import load_model
            name = name or str(model)
            model = load_model(model)
        self.name = name or "model"
        random_weights = is_random(model)  # the checkpoint's fact (load_model), or random_model's
        # What the network is (load_model found it), with COCO's settings unless `facts` says otherwise.
        self.facts = facts or model_facts(model)
        self.device = torch.device(self.options.device)
        self.input_size = tuple(int(v) for v in input_size) if input_size else None
        if self.options.cudnn_benchmark and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model, self.module, self.info = prepare_model(model, self.options)
        self.heads = dict(self.model.heads)
        self._graphs = {}
        self._mean_std = None
        self._compute_dtype = self.options.low_dtype if self.options.cast == "model" else None
        # The flip test is never in this graph: the predictor mirrors around it.
        # Decoding on the device is ctdet's; a multi_pose model is decoded on the host.
        device_decode = self.options.device_decode and not self.facts.is_pose
        if self.options.device_decode and not device_decode:
            logger.info(f"{self.name}: a multi_pose model is decoded on the host (device_decode is for ctdet)")
        self._caps = Capabilities(input_size=self.input_size, accepts_warped=self.options.warped_input,
                                  decodes_on_device=device_decode,
                                  heads=heads_from_channels(list(self.heads.values())),
                                  random_weights=random_weights, facts=self.facts)

    @property
    def capabilities(self):
        return self._caps

    def run(self, batch):
        """float32 (N, 3, H, W) numpy -> [hm, wh, reg] float32 numpy arrays."""
        return self.run_batch(batch)

    # --- running -----------------------------------------------------------

    def describe(self):
        """The settings in effect, for summaries and benchmark JSON."""
        d = asdict(self.options)
        d.update(self.info, backend="torch", torch=torch.__version__, input_size=self.input_size)
        if self.device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.device)
        return d

    def describe_line(self):
        d = self.describe()
        parts = [f"{d['device']}" + (f" ({d['gpu']})" if d.get("gpu") else ""), d["precision"]]
        if d["precision"] in ("fp16", "bf16"):
            parts[-1] += f" by {d['cast']}" + (", heads' final layer fp32" if d["fp32_heads"] else "")
        parts += [name for name in ("fuse_bn", "channels_last", "compile", "cuda_graphs", "pin_memory",
                                    "device_decode") if d.get(name)]
        kernel = d["dcn_kernel"] + (f" ({d['dcn_note']})" if d.get("dcn_note") and d["dcn_note"] != "chosen" else "")
        return f"torch backend: {', '.join(parts)}; DCN kernel {kernel}"

    def _check(self, shape):
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"{self.name}: input of shape {tuple(shape)}, expected (N, 3, H, W)")
        h, w = shape[2:]
        if self.input_size and (h, w) != self.input_size:
            raise ValueError(f"{self.name}: input {h}x{w}, the session takes "
                             f"{self.input_size[0]}x{self.input_size[1]}")
        multiple = self.facts.input_multiple
        if not self.input_size and (h % multiple or w % multiple):
            raise ValueError(f"{self.name}: input {h}x{w}; height and width must be multiples of {multiple}")

    @contextlib.contextmanager
    def _context(self):
        threads = self.options.threads if self.device.type == "cpu" else 0
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            with torch.no_grad(), tf32_allowed(self.options.precision == "tf32"):
                yield
        finally:
            if threads:
                torch.set_num_threads(previous)

    def _host_to_device(self, x):
        """A CPU tensor on the device, through a page-locked copy on CUDA
        (pin_memory) so that the transfer can run asynchronously."""
        if self.device.type == "cuda":
            if self.options.pin_memory:
                pinned = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
                pinned.copy_(x)
                x = pinned
            x = x.to(self.device, non_blocking=self.options.pin_memory)
        return x

    def to_device(self, batch):
        """numpy float32 batch -> the network's input tensor on the device (in
        the compute dtype and memory format), through pinned memory on CUDA."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        x = self._host_to_device(x)
        if self._compute_dtype is not None:
            x = x.to(self._compute_dtype)
        return x.contiguous(memory_format=self._layout)

    def _forward(self, x):
        """The network on a device tensor -> contiguous float32 device tensors."""
        low = self.options.low_dtype
        # No autocast cache: each weight is used once per forward anyway, and
        # a cache must be off for CUDA graph capture.
        ctx = (torch.autocast(self.device.type, dtype=low, cache_enabled=False)
               if low is not None and self.options.cast == "autocast" else contextlib.nullcontext())
        with ctx:
            outs = self.module(x)
        return [o.float().contiguous() for o in outs]

    def _graph(self, x):
        """The CUDA graph for x's shape: captured on first use (after warm-up
        runs on a side stream, as CUDA graph capture requires), then replayed."""
        key = (tuple(x.shape), x.dtype)
        if key not in self._graphs:
            static_in = torch.zeros_like(x)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self._forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def _to_host(self, outs):
        if self.device.type != "cuda":
            return [o.numpy() for o in outs]
        pin = self.options.pin_memory
        # Fresh host tensors every call: the caller keeps the arrays (a writer
        # thread may still hold them while the next batch runs). Pinned ones
        # come from PyTorch's caching host allocator, so this is no cudaHostAlloc.
        hosts = [torch.empty(o.shape, dtype=o.dtype, pin_memory=pin) for o in outs]
        for h, o in zip(hosts, outs):
            h.copy_(o, non_blocking=pin)
        torch.cuda.current_stream(self.device).synchronize()
        return [h.numpy() for h in hosts]

    def run_device(self, x):
        """The network on `to_device`'s tensor -> float32 device tensors, no copy
        to the host (for measuring what the copies cost). Not synchronised."""
        with self._context():
            return self._infer(x)

    def _infer(self, x):
        return self._graph(x) if self.options.cuda_graphs else self._forward(x)

    def run_decoded(self, batch, K=100, warped=False, flip=False):
        """A float32 batch (or, warped, uint8 warped images as run_warped takes)
        -> decode_ctdet's (scores, classes, boxes on the output map) as numpy
        arrays, decoded on the device: only the K detections per input come back.
        flip: upstream's flip test, the mirror made and averaged in on the device
        (combine_flip_torch)."""
        with self._context():
            x = self._input(batch, warped)
            if not flip:
                return self._to_host(decode_ctdet_torch(*self._infer(x), K=K))
            outputs = self._infer(torch.cat([x, x.flip(3)]).contiguous(memory_format=self._layout))
            return self._to_host(decode_ctdet_torch(*combine_flip_torch(*outputs), K=K, hm_is_heat=True))

    def warped_to_device(self, batch):
        """uint8 (N, H, W, 3) BGR warped images -> the network input on the
        device: (v / 255 - mean) / std per channel in float64, then float32 -
        the same bits as the CPU's table (transforms.NORMALISE_LUT) - and
        NHWC memory seen as NCHW, which is channels_last already."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.uint8))
        x = self._host_to_device(x)
        if self._mean_std is None:
            self._mean_std = tuple(torch.tensor(np.asarray(v, np.float32).astype(np.float64), device=self.device)
                                   for v in (self.facts.mean, self.facts.std))
        mean, std = self._mean_std
        x = ((x.double() / 255.0 - mean) / std).to(self._compute_dtype or torch.float32).permute(0, 3, 1, 2)
        return x.contiguous(memory_format=self._layout)

    @property
    def _layout(self):
        return torch.channels_last if self.options.channels_last else torch.contiguous_format

    def _input(self, batch, warped):
        """A numpy batch checked and on the device: float32 (N, 3, H, W), or
        with `warped` uint8 (N, H, W, 3) warped images (see warped_to_device)."""
        batch = np.asarray(batch)
        if not warped:
            self._check(batch.shape)
            return self.to_device(batch)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            raise ValueError(f"{self.name}: warped images of shape {batch.shape} and type {batch.dtype}, "
                             "expected uint8 (N, H, W, 3)")
        self._check((len(batch), 3, *batch.shape[1:3]))
        return self.warped_to_device(batch)

    def run_warped(self, batch):
        """uint8 (N, H, W, 3) BGR warped images (transforms.warp_input) ->
        [hm, wh, reg] float32 numpy arrays, as run_batch on their normalised form."""
        with self._context():
            return self._to_host(self._infer(self._input(batch, warped=True)))

    def run_batch(self, batch):
        """float32 (N, 3, H, W) numpy -> [hm, wh, reg] float32 numpy arrays."""
        with self._context():
            return self._to_host(self._infer(self._input(batch, warped=False)))


def open_torch_session(checkpoint, options=None, input_size=(512, 512)):
    """A TorchSession on an upstream checkpoint (the .pth), with one-line errors."""
    path = Path(checkpoint)
    if path.suffix.lower() == ".onnx":
        raise UserError(f"{path}: the torch backend takes the .pth checkpoint, not an ONNX file")
    return TorchSession(path, options, input_size=input_size)
