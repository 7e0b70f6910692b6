"""A test double for the part of ``torch.cuda`` the ``cuda-graphs`` backend calls, on CPU.

``FakeCuda`` drives the ``"cpu"`` device type. Its graphs behave as CUDA graphs do where the
backend depends on it:

- capturing records every aten op the module runs (a ``TorchDispatchMode``), with the
  very tensors it read and wrote; replaying runs the ops again in order and writes each
  result into the tensor the capture produced (unless it is that tensor's memory, as a
  view's is), so a replay reads whatever the static inputs hold now and leaves its
  results in the static outputs;
- a host sync during capture (``.item()``, ``bool(tensor)``, data-dependent shapes) fails,
  as ``cudaStreamBeginCapture`` makes it fail on a GPU;
- during capture ``torch.cuda.is_current_stream_capturing()`` is true, as it is on a GPU
  (libraries such as transformers skip their host syncs when it is).

It also records what the backend asked for (pools, streams, captures) for the tests.
Users never touch this API: it stands in for ``torch.cuda`` internals only.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that read a device value on the host: bool(tensor), .item(), data-dependent shapes.
_SYNCS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default, torch.ops.aten.item.default,
          torch.ops.aten.nonzero.default}


def _mutates(func) -> bool:
    return any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)


class FakeGraph:
    def __init__(self):
        self.ops = []
        self.replays = 0

    def replay(self):
        with torch.inference_mode():
            for func, args, kwargs, out in self.ops:
                result = func(*args, **kwargs)
                if _mutates(func):
                    continue  # written in place again, into the captured tensors
                for old, new in zip(_tensors(out), _tensors(result)):
                    if not _same_memory(old, new):  # a view of a captured tensor is up to date already
                        old.copy_(new)
        self.replays += 1


def _same_memory(a, b):
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.storage_offset() == b.storage_offset()


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


class _Recorder(TorchDispatchMode):
    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SYNCS:
            raise RuntimeError(f"operation not permitted when stream is capturing ({func}: a host sync)")
        out = func(*args, **kwargs)
        self.graph.ops.append((func, args, kwargs, out))
        return out


class FakeStream:
    def __init__(self, api, name):
        self.api, self.name = api, name

    def wait_stream(self, other):
        self.api.events.append(("wait", self.name, other.name))

    def __repr__(self):
        return f"FakeStream({self.name})"


class FakeCuda:
    """Stands in for ``bucketwise.backends.cuda_graphs.cuda_api()``."""

    device_type = "cpu"

    def __init__(self, available=True):
        self.available = available
        self.events = []
        self.pools = []
        self.graphs = []
        self._default = FakeStream(self, "default")
        self._current = self._default
        self._streams = 0

    def is_available(self):
        return self.available

    def device_count(self):
        return 1

    def graph_pool_handle(self):
        handle = ("pool", len(self.pools))
        self.pools.append(handle)
        return handle

    def new_graph(self):
        graph = FakeGraph()
        self.graphs.append(graph)
        return graph

    @contextlib.contextmanager
    def graph(self, graph, *, pool):
        self.events.append(("capture", pool))
        capturing = torch.cuda.is_current_stream_capturing
        torch.cuda.is_current_stream_capturing = lambda: True
        try:
            with _Recorder(graph):
                yield
        finally:
            torch.cuda.is_current_stream_capturing = capturing

    def new_stream(self, device):
        self._streams += 1
        return FakeStream(self, f"side{self._streams}")

    @contextlib.contextmanager
    def stream(self, stream):
        previous, self._current = self._current, stream
        self.events.append(("enter", stream.name))
        try:
            yield
        finally:
            self._current = previous

    def current_stream(self, device):
        return self._current
