"""Every CUDA kernel memtrain can launch compiles with NVRTC, for compute_80 and
compute_90, on this machine without a GPU (NVRTC needs no driver).

Needs the cupy-cuda12x (or 13x) and nvidia-cuda-nvrtc-cu12 wheels, which the
`test` extra installs; where NVRTC cannot load the test is skipped with the
reason, except under CI=true, where that is a failure (CI must compile them).
"""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from memtrain.kernels import all_kernels
from memtrain.kernels.compile import KernelCompileError, check
from memtrain.kernels.source import Kernel, elementwise


def _nvrtc_reason():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - any load failure means no NVRTC here
        return f"NVRTC unavailable ({type(exc).__name__}: {exc})"
    return None


_MISSING = _nvrtc_reason()
if _MISSING and os.environ.get("CI") == "true":
    pytest.fail(f"CI must compile the CUDA kernels: {_MISSING}", pytrace=False)
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


def _compile(kernel, arch) -> str | None:
    try:
        check(kernel, arch)
    except KernelCompileError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_every_kernel_compiles(arch):
    # each kernel is its own NVRTC program, as at run time; NVRTC releases the GIL, so the
    # machine's cores compile them side by side (157 kernels: 8.1 s on one core, 3.7 s on two)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        failures = [f for f in pool.map(lambda k: _compile(k, arch), all_kernels()) if f]
    assert not failures, "\n".join(failures)


def test_a_syntax_error_fails_with_the_nvrtc_log():
    good = elementwise("probe", "float32", [("S*", "p")], "p[i] = st(ld(p[i]) + (T)1);")
    check(good, "compute_80")
    broken = Kernel(good.name, good.source.replace("(T)1);", "(T)1;"), "float32")  # a missing parenthesis
    with pytest.raises(KernelCompileError, match=r"memtrain_probe_float32 \(compute_80\):[\s\S]*error"):
        check(broken, "compute_80")


def test_an_unknown_identifier_fails_too():
    bad = elementwise("probe2", "float16", [("S*", "p")], "p[i] = st(no_such_function(ld(p[i])));")
    with pytest.raises(KernelCompileError, match="no_such_function"):
        check(bad, "compute_90")
