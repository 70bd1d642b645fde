"""The bundled 8x8 digits data set (1,797 images, pixel values 0..16)."""

from __future__ import annotations

from memtrain.data.dataset import Raw
from memtrain.errors import DataError


def load_digits() -> Raw:
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415 - `import memtrain` stays free of sklearn
    except ImportError:
        raise DataError("dataset: 'digits' is scikit-learn's bundled data set and scikit-learn is not "
                         "installed; expected `pip install scikit-learn`") from None
    X, y = load_digits(return_X_y=True)
    # Pixel intensities are 0..16 in this data set.
    return Raw("digits", "digits", X, y, divisor=16.0, is_file=False)
