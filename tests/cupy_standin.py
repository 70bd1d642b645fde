"""A CPU stand-in for CuPy: the GPU code paths run here, with CuPy's rules where they matter.

memtrain's GPU path is Python that must treat device arrays as device arrays. The
host-built kernels (memtrain/kernels/host.py) check the kernels' arithmetic; this
module checks the Python around them, by behaving as CuPy does where a mistake
would otherwise surface only on a GPU:

- implicit conversion to NumPy raises (`np.asarray(a)`, `np.ascontiguousarray(a)`:
  CuPy's "Implicit conversion to a NumPy array is not allowed"), and a NumPy array
  given to a device operation raises ("Unsupported type"); `.get()` is the way out;
- `.set(arr)` takes a NumPy array of exactly the same shape and dtype (CuPy's
  ndarray.set), and only on a contiguous array;
- every array that owns memory takes it from a counted pool (512-byte rounding, a
  cache of freed blocks, `set_limit`, OutOfMemoryError past it, memory hooks,
  `set_allocator` to install another pool); a view takes nothing;
- stream capture records the operations instead of running them (a replay runs the
  record on the same buffers, as a CUDA graph does); an allocation or a read back
  to the host during capture raises, as both are errors on a device;
- `matmul` of (1, k) by (k, 1) allocates a temporary, as CuPy's tensordot does
  for m == n == 1 (`(a.ravel() * b.ravel()).sum(out=c)`).

The kernels run through the host build (kernels/host.py); a NumPy array handed to
a kernel raises. Everything else is NumPy underneath.

`install(monkeypatch, host_launcher)` puts it in sys.modules as `cupy` for a test.
"""

from __future__ import annotations

import sys
import types
import weakref

import numpy as np

GRANULE = 512  # CuPy's pool rounds every allocation up to this
DEVICE_TOTAL = 8 * 1024**3
CONTEXT_BYTES = 300 * 1024**2  # what the "device" holds besides the pools (a CUDA context's order)


class OutOfMemoryError(MemoryError):
    """cupy.cuda.memory.OutOfMemoryError (a MemoryError, as CuPy's is)."""

    def __init__(self, size, total, limit):
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes, "
                         f"limit set to: {limit:,} bytes).")


class CaptureError(RuntimeError):
    """An operation a stream capture does not allow (cudaErrorStreamCaptureUnsupported)."""


class _State:
    capture = None  # a list of recorded operations while a stream captures, else None
    allocator = None
    pools = weakref.WeakSet()
    hooks: list = []
    syncs = 0  # reads back to the host (each a device synchronisation): tests count them


_S = _State()


# -- memory ----------------------------------------------------------------------------------


class _Block:
    """One allocation; gives its bytes back to the pool's cache when the last array using it goes."""

    def __init__(self, pool, size):
        self.pool, self.size = pool, size
        self.ptr = id(self)

    def __del__(self):
        self.pool._release(self.size)


class MemoryPool:
    def __init__(self):
        self._used = 0
        self._cached: dict = {}  # rounded size -> free blocks of that size
        self._limit = 0
        self.mallocs = 0  # allocations served (cache hits included): tests count them
        _S.pools.add(self)

    def malloc(self, size: int) -> _Block:
        if _S.capture is not None:
            raise CaptureError(f"cudaErrorStreamCaptureUnsupported: allocating {size:,} bytes during stream capture")
        rounded = -(-max(int(size), 1) // GRANULE) * GRANULE
        if self._cached.get(rounded):
            self._cached[rounded] -= 1
        else:
            if self._limit and self.total_bytes() + rounded > self._limit:
                self.free_all_blocks()
                if self._used + rounded > self._limit:
                    raise OutOfMemoryError(rounded, self._used, self._limit)
        self._used += rounded
        self.mallocs += 1
        block = _Block(self, rounded)
        for hook in list(_S.hooks):
            hook.malloc_postprocess(device_id=0, size=size, mem_size=rounded, mem_ptr=block.ptr, pmem_id=id(block))
        return block

    def _release(self, rounded):
        self._used -= rounded
        self._cached[rounded] = self._cached.get(rounded, 0) + 1

    def used_bytes(self) -> int:
        return self._used

    def free_bytes(self) -> int:
        return sum(size * n for size, n in self._cached.items())

    def total_bytes(self) -> int:
        return self._used + self.free_bytes()

    def free_all_blocks(self, stream=None) -> None:
        self._cached.clear()

    def set_limit(self, size=None, fraction=None) -> None:
        self._limit = int(size or 0)

    def get_limit(self) -> int:
        return self._limit


class MemoryHook:
    """cupy.cuda.MemoryHook: `with hook:` calls its malloc_postprocess for every allocation."""

    name = "hook"

    def __enter__(self):
        _S.hooks.append(self)
        return self

    def __exit__(self, *exc):
        _S.hooks.remove(self)
        return False

    def malloc_postprocess(self, **kwargs):
        pass


_DEFAULT_POOL = MemoryPool()
_S.allocator = _DEFAULT_POOL.malloc


def get_default_memory_pool() -> MemoryPool:
    return _DEFAULT_POOL


def set_allocator(allocator=None) -> None:
    _S.allocator = allocator or _DEFAULT_POOL.malloc


def get_allocator():
    return _S.allocator


def _alloc(nbytes: int):
    if nbytes == 0:
        return None
    return _S.allocator(nbytes)


def _run(op) -> None:
    """Run a device operation now, or record it while a stream captures."""
    if _S.capture is not None:
        _S.capture.append(op)
    else:
        op()


def _sync(what: str) -> None:
    _S.syncs += 1
    if _S.capture is not None:
        raise CaptureError(f"cudaErrorStreamCaptureUnsupported: {what} synchronises during stream capture")


# -- arrays -------------------------------------------------------------------------------------


def _dev(x, what="argument"):
    """The NumPy array under a device array; NumPy arrays are refused, as CuPy refuses them."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and x.ndim > 0:
        raise TypeError(f"Unsupported type {type(x)} ({what}: a NumPy array given to a CuPy operation)")
    if isinstance(x, (list, tuple)):
        raise TypeError(f"Unsupported type {type(x)} ({what})")
    return x


def _new(a: np.ndarray) -> "ndarray":
    """A fresh device array holding `a` (its memory from the current allocator)."""
    block = _alloc(a.nbytes)
    return ndarray(a if a.flags.c_contiguous else a.copy(), block)


def _wrap_result(r):
    if isinstance(r, tuple):
        return tuple(_wrap_result(x) for x in r)
    if isinstance(r, (np.ndarray, np.generic)):
        return _new(np.asarray(r))
    return r


def _key(key):
    if isinstance(key, tuple):
        return tuple(_key(k) for k in key)
    if isinstance(key, ndarray):
        return key._a
    return key


def _function(fn, name):
    def f(*args, out=None, **kw):
        a = [_dev(x, name) for x in args]
        kw = {k: (_dev(v, name) if isinstance(v, (ndarray, np.ndarray)) else v) for k, v in kw.items()}
        if isinstance(out, tuple):
            (out,) = out
        if out is not None:
            if not isinstance(out, ndarray):
                raise TypeError(f"{name}: out must be a cupy.ndarray, got {type(out)}")
            target = out._a
            _run(lambda: fn(*a, out=target, **kw))
            return out
        if _S.capture is not None:
            raise CaptureError(f"cudaErrorStreamCaptureUnsupported: {name} allocates its result during capture")
        return _wrap_result(fn(*a, **kw))

    f.__name__ = name
    return f


class ndarray:  # noqa: N801 - CuPy's name
    __slots__ = ("_a", "_block", "__weakref__")
    __array_priority__ = 100

    def __init__(self, a, block):
        self._a, self._block = a, block

    # -- what CuPy forbids
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        if method != "__call__":
            return NotImplemented
        return getattr(_MODULE, ufunc.__name__)(*inputs, **kw)

    def __array_function__(self, func, types_, args, kwargs):
        impl = getattr(_MODULE, func.__name__, None)
        return NotImplemented if impl is None else impl(*args, **kwargs)

    # -- host transfers
    def get(self, stream=None, order="C", out=None):
        _sync("get()")
        return self._a.copy()

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if not self._a.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        src = arr.copy()
        _run(lambda: self._a.__setitem__(Ellipsis, src))

    def item(self):
        _sync("item()")
        return self._a.item()

    def tolist(self):
        _sync("tolist()")
        return self._a.tolist()

    def __float__(self):
        _sync("float()")
        return float(self._a)

    def __int__(self):
        _sync("int()")
        return int(self._a)

    def __bool__(self):
        _sync("bool()")
        return bool(self._a)

    # -- shape and views
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T, self._block))
    data = property(lambda self: types.SimpleNamespace(ptr=self._a.__array_interface__["data"][0]))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"standin.ndarray(shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key):
        k = _key(key)
        r = self._a[k]
        if isinstance(r, np.generic):  # a single element: CuPy gives a 0-d view
            r = self._a[(k if isinstance(k, tuple) else (k,)) + (Ellipsis,)]
        if np.may_share_memory(r, self._a):
            return ndarray(r, self._block)
        if _S.capture is not None:
            raise CaptureError("cudaErrorStreamCaptureUnsupported: advanced indexing allocates during capture")
        return _new(r)

    def __setitem__(self, key, value):
        k = _key(key)
        if isinstance(value, np.ndarray) and value.ndim > 0:
            tmp = _alloc(value.nbytes)  # CuPy copies a host value to the device first
            src = value.copy()
            _run(lambda: self._a.__setitem__(k, src))
            del tmp
            return
        v = _dev(value, "value")
        _run(lambda: self._a.__setitem__(k, v))

    def reshape(self, *shape, order="C"):
        r = self._a.reshape(*shape)
        return ndarray(r, self._block) if np.may_share_memory(r, self._a) else _new(r)

    def ravel(self):
        return self.reshape(-1)

    def swapaxes(self, axis1, axis2):  # a view, as CuPy's
        return ndarray(self._a.swapaxes(axis1, axis2), self._block)

    def view(self, dtype=None):
        return ndarray(self._a.view(dtype), self._block)

    def astype(self, dtype, copy=True, **kw):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        if _S.capture is not None:
            raise CaptureError("cudaErrorStreamCaptureUnsupported: astype allocates during capture")
        return _new(self._a.astype(dtype))

    def copy(self, order="C"):
        return _MODULE.copy(self)

    def fill(self, value):
        _run(lambda: self._a.fill(value))

    def take(self, indices, axis=None, out=None):
        return _MODULE.take(self, indices, axis=axis, out=out)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _method(name):
    def m(self, *args, **kw):
        return getattr(_MODULE, name)(self, *args, **kw)

    return m


for _name in ("sum", "min", "max", "mean", "argmax", "argmin", "cumsum", "dot", "any", "all", "prod", "clip"):
    setattr(ndarray, _name, _method(_name))

_BINARY = {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide", "floordiv": "floor_divide",
           "mod": "remainder", "pow": "power", "matmul": "matmul", "and": "bitwise_and", "or": "bitwise_or",
           "xor": "bitwise_xor"}


def _binary(ufunc, reflected=False, inplace=False):
    def op(self, other):
        fn = getattr(_MODULE, ufunc)
        if inplace:
            fn(self, other, out=self)
            return self
        return fn(other, self) if reflected else fn(self, other)

    return op


for _dunder, _ufunc in _BINARY.items():
    setattr(ndarray, f"__{_dunder}__", _binary(_ufunc))
    setattr(ndarray, f"__r{_dunder}__", _binary(_ufunc, reflected=True))
    setattr(ndarray, f"__i{_dunder}__", _binary(_ufunc, inplace=True))
for _dunder, _ufunc in {"lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal", "eq": "equal",
                        "ne": "not_equal"}.items():
    setattr(ndarray, f"__{_dunder}__", _binary(_ufunc))
ndarray.__neg__ = lambda self: _MODULE.negative(self)
ndarray.__abs__ = lambda self: _MODULE.absolute(self)
ndarray.__invert__ = lambda self: _MODULE.invert(self)
ndarray.__hash__ = None
ndarray.__module__ = "cupy"  # memtrain.backend.array_module tells CuPy's arrays by their module


# -- module functions ------------------------------------------------------------------------------


def _creator(fill):
    def make(shape, dtype=float, order="C"):
        if _S.capture is not None:
            raise CaptureError("cudaErrorStreamCaptureUnsupported: allocating during stream capture")
        a = np.empty(shape, dtype=dtype)
        block = _alloc(a.nbytes)
        if fill is not None:
            a[...] = fill
        return ndarray(a, block)

    return make


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    return _new(np.array(a, dtype=dtype))  # a host -> device copy


def asnumpy(a, stream=None, order="C", out=None):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def matmul(a, b, out=None, **kw):
    if a.ndim == 2 and b.ndim == 2 and a.shape[0] == 1 and b.shape[1] == 1:
        # CuPy's tensordot for m == n == 1: (a.ravel() * b.ravel()).sum(out=c) makes the product first
        tmp = _alloc(a.shape[1] * a.itemsize)
        del tmp
    return _function(np.matmul, "matmul")(a, b, out=out, **kw)


def take(a, indices, axis=None, out=None):
    return _function(np.take, "take")(a, indices, axis=axis, out=out)


class _Generator:
    def __init__(self, seed):
        self._g = np.random.default_rng(seed)

    def random(self, size=None, dtype=np.float64, out=None):
        if out is None:
            return _new(self._g.random(size, dtype=dtype))
        target = out._a
        _run(lambda: self._g.random(out=target, dtype=dtype))
        return out

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        if out is None:
            return _new(self._g.standard_normal(size, dtype=dtype))
        target = out._a
        _run(lambda: self._g.standard_normal(out=target, dtype=dtype))
        return out


# -- cupy.cuda ---------------------------------------------------------------------------------------


class Event:
    def synchronize(self):
        _sync("Event.synchronize()")


class Graph:
    """A captured step: the recorded operations, replayed on the same buffers."""

    def __init__(self, ops):
        self.ops = ops
        self.launches = 0

    def launch(self, stream=None):
        if _S.capture is not None:
            raise CaptureError("graph launch during capture")
        self.launches += 1
        for op in self.ops:
            op()


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptr=0):
        self.captures = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def record(self, event=None):
        return Event()

    def wait_event(self, event):
        pass

    def synchronize(self):
        _sync("Stream.synchronize()")

    def begin_capture(self, mode=None):
        if _S.capture is not None:
            raise CaptureError("a capture is already under way")
        _S.capture = []

    def end_capture(self):
        ops, _S.capture = _S.capture, None
        self.captures += 1
        return Graph(ops)

    def is_capturing(self):
        return _S.capture is not None


Stream.null = Stream(null=True)


class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise RuntimeError(f"cudaErrorInvalidDevice: device {self.id} (the stand-in has one)")

    pci_bus_id = "0000:00:1E.0"
    attributes = {"MultiProcessorCount": 4}
    compute_capability = "90"

    def use(self):
        pass

    def synchronize(self):
        _sync("Device.synchronize()")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def mem_get_info():
    used = CONTEXT_BYTES + sum(p.total_bytes() for p in _S.pools)
    return DEVICE_TOTAL - used, DEVICE_TOTAL


def _module() -> types.ModuleType:
    m = types.ModuleType("cupy", __doc__)
    m.__getattr__ = _module_getattr
    m.ndarray = ndarray
    m.__version__ = "stand-in"
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "intp", "uint8", "bool_",
                 "dtype", "newaxis", "inf", "nan", "pi"):
        setattr(m, name, getattr(np, name))
    m.zeros, m.empty, m.ones = _creator(0), _creator(None), _creator(1)
    m.asarray = m.array = asarray
    m.asnumpy, m.matmul, m.take = asnumpy, matmul, take
    m.get_default_memory_pool = get_default_memory_pool
    m.get_default_pinned_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    m.random = types.SimpleNamespace(default_rng=_Generator)
    m.RawKernel = _no_raw_kernel
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1, getDevice=lambda: 0, deviceSynchronize=lambda: _sync("deviceSynchronize()"),
        memGetInfo=mem_get_info, runtimeGetVersion=lambda: 12040, driverGetVersion=lambda: 12040,
        getDeviceProperties=lambda i: {"name": b"Stand-in GPU (CPU)", "totalGlobalMem": DEVICE_TOTAL,
                                       "uuid": bytes(range(16)), "multiProcessorCount": 4})
    memory = types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError, MemoryPool=MemoryPool,
                                   set_allocator=set_allocator, get_allocator=get_allocator)
    m.cuda = types.SimpleNamespace(runtime=runtime, memory=memory, Device=Device, Stream=Stream, Event=Event,
                                   MemoryPool=MemoryPool, MemoryHook=MemoryHook, set_allocator=set_allocator,
                                   get_allocator=get_allocator, graph=types.SimpleNamespace(Graph=Graph))
    return m


def _no_raw_kernel(*args, **kw):
    raise RuntimeError("the stand-in runs memtrain's kernels through the host build (kernels/host.py)")


def _module_getattr(name):
    fn = getattr(np, name, None)
    if fn is None or not callable(fn) or isinstance(fn, type):
        raise AttributeError(f"the CuPy stand-in has no {name!r}")
    f = _function(fn, name)
    setattr(_MODULE, name, f)
    return f


_MODULE = _module()


class StandinLauncher:
    """kernels/dispatch.py's Launcher interface: the host-built kernels on the stand-in's arrays.
    A launch is recorded, not run, while a stream captures; a NumPy array given to a kernel raises."""

    def __init__(self, host):
        self.host = host
        self.launches = 0

    def _call(self, method, *head, args):
        plain = [_kernel_arg(a) for a in args]
        self.launches += 1
        _run(lambda: getattr(self.host, method)(*head, plain))

    def elementwise(self, kernel, n, args):
        self._call("elementwise", kernel, n, args=args)

    def rows(self, kernel, rows, args):
        self._call("rows", kernel, rows, args=args)

    def elementwise_rows(self, kernel, n, trials, args):
        self._call("elementwise_rows", kernel, n, trials, args=args)

    def reduce(self, kernel, n, args):
        self._call("reduce", kernel, n, args=args)

    def single(self, kernel, args):
        self._call("single", kernel, args=args)

    def blocks(self, kernel, grid, threads, args):
        self._call("blocks", kernel, grid, threads, args=args)


def _kernel_arg(a):
    if isinstance(a, ndarray):
        return a._a
    if isinstance(a, np.ndarray):
        raise TypeError("a host NumPy array was passed to a device kernel")
    return a


def install(monkeypatch, host_launcher):
    """Make `import cupy` this stand-in (and the kernels run through `host_launcher`) for one test."""
    from memtrain.kernels import dispatch

    monkeypatch.setitem(sys.modules, "cupy", _MODULE)
    linalg = types.SimpleNamespace(COMPUTE_TYPE_TF32=7, COMPUTE_TYPE_DEFAULT=1, set_compute_type=lambda d, k: None)
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg
    monkeypatch.setitem(sys.modules, "cupy._core", core)
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", linalg)
    launcher = StandinLauncher(host_launcher)
    monkeypatch.setattr(dispatch, "_DEFAULT", [launcher])
    set_allocator(None)
    _DEFAULT_POOL.set_limit(size=0)
    return _MODULE

