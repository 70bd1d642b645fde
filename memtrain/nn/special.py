"""erf as an in-place ufunc on either backend (exact GELU needs it; NumPy has none)."""

from memtrain.backend import array_module


def erf(x, out):
    xp = array_module(x)
    if xp.__name__ == "cupy":
        from cupyx.scipy.special import erf as cupy_erf  # noqa: PLC0415

        return cupy_erf(x, out=out)
    from scipy.special import erf as scipy_erf  # noqa: PLC0415

    return scipy_erf(x, out=out)
