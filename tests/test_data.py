import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from memtrain.data import Dataset, load_dataset

# -- helpers -----------------------------------------------------------------------------


def write_idx(path, arr, *, gz=False, code=0x08):
    """An IDX file as MNIST ships it: 0x00 0x00 type ndims, big-endian u32 dims, then the data."""
    arr = np.asarray(arr)
    data = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes() + arr.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def mnist_like(tmp_path, n=5, gz=False, prefix="train"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 3, 2), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = (np.arange(n) % 3).astype(np.uint8)
    ext = ".gz" if gz else ""
    ipath = write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", images, gz=gz)
    lpath = write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz=gz)
    return ipath, lpath, images, labels


def npz(tmp_path, name="d.npz", **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def small(n=20, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), np.arange(n) % 3


# -- digits ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", validation=0.2, test=0.2, seed=0)


def test_digits_shapes_classes_and_layout(digits):
    ds = digits
    assert isinstance(ds, Dataset)
    assert (len(ds.X_train), len(ds.X_val), len(ds.X_test)) == (1079, 359, 359)
    assert ds.n_features == 64 and ds.n_outputs == 10 and ds.task == "classification"
    assert ds.X_train.dtype == np.float32 and ds.X_train.flags.c_contiguous
    assert ds.y_train.dtype == np.int64 and ds.y_train.shape == (1079,)
    assert set(np.unique(np.concatenate([ds.y_train, ds.y_val, ds.y_test]))) == set(range(10))
    assert 0.0 == min(a.min() for a in (ds.X_train, ds.X_val, ds.X_test))
    assert 1.0 == max(a.max() for a in (ds.X_train, ds.X_val, ds.X_test))  # pixels 0..16 divided by 16
    assert ds.describe() == ("digits: 1,079 train / 359 validation / 359 test rows, 64 features, 10 classes")
    assert not ds.standardized and ds.preprocessing()["input_divisor"] == 16.0


def test_digits_read_from_the_file_scikit_learn_ships_equal_its_loader(monkeypatch):
    """The file is read without importing scikit-learn (~2 s of a small job's start-up) and
    gives exactly what sklearn.datasets.load_digits gives, through the whole load."""
    from sklearn.datasets import load_digits

    import memtrain.data.digits as digits_module

    raw = digits_module.load_digits()
    X, y = load_digits(return_X_y=True)
    assert raw.X.dtype == X.dtype and raw.y.dtype == y.dtype
    np.testing.assert_array_equal(raw.X, X)
    np.testing.assert_array_equal(raw.y, y)
    ours = load_dataset("digits", validation=0.2, test=0.2, standardize=True, seed=3)
    monkeypatch.setattr(digits_module, "digits_file", lambda: None)  # scikit-learn's own loader
    theirs = load_dataset("digits", validation=0.2, test=0.2, standardize=True, seed=3)
    for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test", "mean", "std"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name), err_msg=name)
    code = ("import sys; from memtrain.data import load_dataset; ds = load_dataset('digits'); "
            "print(len(ds.X_train), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1438", "False"]


@pytest.mark.parametrize("text", [
    "0,1,16\n3,0,9\n", "5\n7\n", "0,100,999\n",  # small unsigned integers: the fast parser
    "0,1.5,2\n3,4,5\n", "-1,2\n3,4\n", "1, 2\n3,4\n", "1,2\n3,4", "1,2\r\n3,4\r\n",  # the general one
])
def test_digits_table_reader_gives_what_loadtxt_gives(tmp_path, text):
    """read_table parses a table of small integers itself (np.loadtxt was ~21 ms of a small job's
    start-up) and hands anything else to np.loadtxt: the same float64 values either way."""
    from memtrain.data.digits import _small_int_table, read_table

    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    got = read_table(path)
    want = np.loadtxt(text.splitlines(), delimiter=",", ndmin=2)
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    fast = text in ("0,1,16\n3,0,9\n", "5\n7\n", "0,100,999\n")
    assert (_small_int_table(text.encode()) is not None) == fast


def test_digits_table_is_parsed_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    """The parsed table is kept in the cache dir (0.2 ms to load against 8-12 ms to parse), keyed by the
    file's bytes; a changed file, a damaged cache file or a cache dir that cannot be written still give
    the file's values."""
    import memtrain.data.digits as digits_module

    cache = tmp_path / "cache"
    monkeypatch.setenv("MEMTRAIN_CACHE_DIR", str(cache))
    src = tmp_path / "d.csv.gz"
    src.write_bytes(gzip.compress(b"0,1,16\n3,0,9\n"))
    want = np.loadtxt(["0,1,16", "3,0,9"], delimiter=",", ndmin=2)
    parsed = []
    monkeypatch.setattr(digits_module, "read_table", lambda p: parsed.append(p) or want.copy())
    np.testing.assert_array_equal(digits_module.cached_table(src), want)
    (kept,) = cache.glob("digits-*.npy")
    np.testing.assert_array_equal(digits_module.cached_table(src), want)
    assert len(parsed) == 1  # the second call read the cache
    kept.write_bytes(b"garbage")  # damaged: parsed again and replaced
    np.testing.assert_array_equal(digits_module.cached_table(src), want)
    assert len(parsed) == 2 and np.load(kept).shape == (2, 3)
    os.utime(src, ns=(0, 10**9))  # the same bytes (another install of the file): the same entry
    digits_module.cached_table(src)
    assert len(parsed) == 2
    src.write_bytes(gzip.compress(b"0,1,16\n3,0,8\n"))  # other bytes: another entry, parsed again
    digits_module.cached_table(src)
    assert len(parsed) == 3 and len(list(cache.glob("digits-*.npy"))) == 2
    monkeypatch.setenv("MEMTRAIN_CACHE_DIR", str(src))  # a file, not a directory: nothing cached, no error
    np.testing.assert_array_equal(digits_module.cached_table(src), want)
    assert len(parsed) == 4 and not list(tmp_path.glob(".digits-*"))


def test_digits_table_reader_refuses_ragged_rows():
    from memtrain.data.digits import _small_int_table

    assert _small_int_table(b"1,2,3\n4,5\n6,7,8\n") is None  # np.loadtxt then names the row
    assert _small_int_table(b"1,,3\n4,5,6\n") is None
    assert _small_int_table(b"") is None


def test_digits_split_is_deterministic_and_test_set_stable(digits):
    again = load_dataset("digits", validation=0.2, test=0.2, seed=0)
    assert np.array_equal(again.X_val, digits.X_val) and np.array_equal(again.y_train, digits.y_train)
    other = load_dataset("digits", validation=0.2, test=0.2, seed=1)
    assert not np.array_equal(other.X_test, digits.X_test)
    # the test rows are drawn first, so a different validation fraction leaves them alone
    fewer = load_dataset("digits", validation=0.1, test=0.2, seed=0)
    assert np.array_equal(fewer.X_test, digits.X_test) and len(fewer.X_val) == 180
    none = load_dataset("digits", validation=0.0, test=0.0)
    assert none.X_val is None and none.y_val is None and none.X_test is None and len(none.X_train) == 1797


def test_digits_standardization_uses_training_statistics(digits):
    ds = load_dataset("digits", validation=0.2, test=0.2, seed=0, standardize=True, dtype="float64")
    assert ds.standardized and ds.X_train.dtype == np.float64
    mean, std = ds.X_train.mean(axis=0), ds.X_train.std(axis=0)
    constant = digits.X_train.std(axis=0) == 0  # e.g. the corner pixels of the digits
    assert constant.any()
    np.testing.assert_allclose(mean, 0.0, atol=1e-12)
    np.testing.assert_allclose(std[~constant], 1.0, rtol=1e-12)
    assert np.all(std[constant] == 0) and np.all(ds.std[constant] == 1.0)  # centred, not divided by 0
    # val and test are transformed with the training split's mean/std, not their own
    for raw, got in ((digits.X_val, ds.X_val), (digits.X_test, ds.X_test)):
        np.testing.assert_allclose(got, (raw.astype(np.float64) - ds.mean) / ds.std, atol=1e-6)
    assert abs(ds.X_val.mean()) > 1e-6
    prep = ds.preprocessing()
    assert prep["standardize"] is True and len(prep["mean"]) == 64 and json.dumps(prep)
    assert ds.describe().endswith(", standardized")


def test_float16_output():
    ds = load_dataset("digits", dtype="float16", validation=0.0)
    assert ds.X_train.dtype == np.float16 and ds.X_train.flags.c_contiguous


def test_sigmoid_and_linear_label_layouts(tmp_path):
    X, y = small(10)
    ds = load_dataset(str(npz(tmp_path, X=X, y=(y > 0))), validation=0, output="sigmoid", n_outputs=1)
    assert ds.y_train.shape == (10, 1) and ds.y_train.dtype == np.float32 and ds.n_outputs == 1
    assert set(np.unique(ds.y_train)) == {0.0, 1.0}
    assert ds.describe().endswith("2 classes (1 sigmoid output)")
    ds = load_dataset(str(npz(tmp_path, X=X, y=y)), validation=0, output="linear", dtype="float64")
    assert ds.y_train.shape == (10, 1) and ds.y_train.dtype == np.float64 and ds.task == "regression"
    ds = load_dataset(str(npz(tmp_path, X=X, y=np.c_[y, y])), validation=0, output="linear", n_outputs=2)
    assert ds.y_train.shape == (10, 2) and ds.describe().endswith("2 outputs")


# -- IDX ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_labels_found_beside_images(tmp_path, gz):
    ipath, _, images, labels = mnist_like(tmp_path, gz=gz)
    ds = load_dataset(str(ipath), validation=0)
    assert ds.name == ipath.name and ds.n_features == 6 and ds.n_outputs == 3
    np.testing.assert_array_equal(ds.X_train, (images.reshape(5, 6) / np.float32(255)).astype(np.float32))
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0
    np.testing.assert_array_equal(ds.y_train, labels)
    assert ds.preprocessing()["input_divisor"] == 255.0


def test_idx_pair_form_and_mixed_compression(tmp_path):
    images = np.arange(24, dtype=np.uint8).reshape(4, 2, 3)
    ipath = write_idx(tmp_path / "mnist-train.idx", images)
    lpath = write_idx(tmp_path / "mnist-labels.idx", np.array([0, 1, 1, 0], dtype=np.uint8), gz=True)
    ds = load_dataset(f"{ipath},{lpath}", validation=0.25, n_outputs=10)
    assert len(ds.X_train) == 3 and len(ds.X_val) == 1 and ds.n_outputs == 10
    # t10k naming, images gzipped and labels plain
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([2, 1, 1, 0], dtype=np.uint8))
    ds = load_dataset(str(tmp_path / "t10k-images-idx3-ubyte.gz"), validation=0)
    assert list(ds.y_train) == [2, 1, 1, 0]
    # the dotted spelling some mirrors use
    write_idx(tmp_path / "train-images.idx3-ubyte", images)
    write_idx(tmp_path / "train-labels.idx1-ubyte", np.array([1, 1, 0, 0], dtype=np.uint8))
    assert list(load_dataset(str(tmp_path / "train-images.idx3-ubyte"), validation=0).y_train) == [1, 1, 0, 0]


def test_loading_idx_images_peaks_at_the_split_arrays(tmp_path):
    """Measured with tracemalloc: MNIST-shaped rows (784 features) loaded and split. The file's bytes,
    their float32 cast and a copy of the larger held-out split were 1.86x the arrays; read block by
    block into the split arrays, 1.05x (the working blocks)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    images = write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (20_000, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", (np.arange(20_000) % 10).astype(np.uint8))
    tracemalloc.start()
    ds = load_dataset(str(images), validation=0.2, test=0.2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    held = sum(a.nbytes for a in (ds.X_train, ds.y_train, ds.X_val, ds.y_val, ds.X_test, ds.y_test))
    assert peak / held < 1.15, peak / held


def test_idx_errors(tmp_path):
    ipath, lpath, images, labels = mnist_like(tmp_path)
    good = ipath.read_bytes()
    ipath.write_bytes(b"\x08\x03" + good[2:])
    with pytest.raises(ValueError, match=rf"{ipath.name}: magic: got 0x08 0x03 .*expected 0x00 0x00 0x08"):
        load_dataset(str(ipath))
    write_idx(ipath, images.astype(">f4"), code=0x0D)
    with pytest.raises(ValueError, match=r"magic: element type 0x0D \(float32\) is not supported; expected 0x08"):
        load_dataset(str(ipath))
    ipath.write_bytes(good[:-3])
    with pytest.raises(ValueError, match=r"size: 43 bytes, the header's 5x3x2 needs 46 \(truncated\)"):
        load_dataset(str(ipath))
    ipath.write_bytes(good[:10])
    with pytest.raises(ValueError, match=r"size: 10 bytes, shorter than the 16-byte header"):
        load_dataset(str(ipath))
    ipath.write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(ValueError, match=rf"{ipath.name}: gzip: truncated or corrupt"):
        load_dataset(str(ipath))
    ipath.write_bytes(good)
    write_idx(lpath, labels[:4])
    with pytest.raises(ValueError, match=r"y: 4 labels, but train-images-idx3-ubyte has 5 images"):
        load_dataset(str(ipath))
    lpath.unlink()
    with pytest.raises(ValueError, match=r"labels: expected train-labels-idx1-ubyte\[\.gz\] beside it"):
        load_dataset(str(ipath))
    with pytest.raises(ValueError, match=r"images\.idx: labels: cannot find the labels file"):
        load_dataset(str(write_idx(tmp_path / "images.idx", images)))
    with pytest.raises(ValueError, match=r"missing-images-idx3-ubyte: file not found"):
        load_dataset(str(tmp_path / "missing-images-idx3-ubyte"))


def test_idx_images_read_as_a_gzip_stream_are_checked_at_its_end(tmp_path):
    """Images are read block by block into the splits: a gzip file's length is known only at its end,
    and a short, long or cut stream gets the message the whole-file reader gave."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    ipath = write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", (np.arange(300) % 3).astype(np.uint8))
    ds = load_dataset(str(ipath), validation=0)
    np.testing.assert_array_equal(ds.X_train, np.divide(images.reshape(300, -1), 255, dtype=np.float32))
    good = gzip.decompress(ipath.read_bytes())
    for data, message in ((gzip.compress(good[:-1000]), r"size: 234,216 bytes, the header's 300x28x28 needs 235,216 "
                                                        r"\(truncated\)"),
                          (gzip.compress(good + b"xyz"), r"size: 235,219 bytes, .* needs 235,216 \(trailing bytes\)"),
                          (gzip.compress(good)[:-5000], r"gzip: truncated or corrupt")):
        ipath.write_bytes(data)
        with pytest.raises(ValueError, match=message):
            load_dataset(str(ipath), validation=0)


# -- npz and csv -------------------------------------------------------------------------


def test_npz_with_its_own_validation_and_test(tmp_path):
    X, y = small(20)
    p = npz(tmp_path, X=X, y=y, X_val=X[:4], y_val=y[:4], X_test=X[4:7], y_test=y[4:7])
    ds = load_dataset(str(p), validation=0.5, test=0.5, dtype="float64")  # fractions unused: the file has both
    assert (len(ds.X_train), len(ds.X_val), len(ds.X_test)) == (20, 4, 3)
    np.testing.assert_array_equal(ds.X_train, X)
    np.testing.assert_array_equal(ds.y_test, y[4:7])
    images = np.zeros((6, 2, 2), dtype=np.uint8)  # image stacks are flattened to one row each
    assert load_dataset(str(npz(tmp_path, "i.npz", X=images, y=np.arange(6) % 2))).n_features == 4


def test_validation_source(tmp_path):
    X, y = small(20)
    Xv, yv = small(6, seed=1)
    train, val = npz(tmp_path, "t.npz", X=X, y=y), npz(tmp_path, "v.npz", X=Xv, y=yv)
    ds = load_dataset(str(train), validation_source=str(val), validation=0.2, standardize=True, dtype="float64")
    assert len(ds.X_train) == 20 and len(ds.X_val) == 6  # the fraction is not used
    np.testing.assert_allclose(ds.X_val, (Xv - X.mean(axis=0)) / X.std(axis=0), rtol=1e-12)
    with pytest.raises(ValueError, match=r"validation_dataset: .*t2\.npz already carries X_val/y_val"):
        load_dataset(str(npz(tmp_path, "t2.npz", X=X, y=y, X_val=Xv, y_val=yv)), validation_source=str(val))
    with pytest.raises(ValueError, match=r"v3\.npz: X: 2 features, but the training data .* has 3"):
        load_dataset(str(train), validation_source=str(npz(tmp_path, "v3.npz", X=Xv[:, :2], y=yv)))
    with pytest.raises(ValueError, match=r"validation_dataset: digits is split from the training data"):
        load_dataset(str(train), validation_source="digits")
    with pytest.raises(ValueError, match=r"validation_dataset: unknown source 'v\.txt'"):
        load_dataset(str(train), validation_source="v.txt")


def test_csv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a, label ,b\n1,0,2.5\n\n3,1,-4\n5, 2 ,nan_free\n".replace("nan_free", "6e0"))
    ds = load_dataset(str(p), label_column="label", validation=0, dtype="float64")
    np.testing.assert_array_equal(ds.X_train, [[1, 2.5], [3, -4], [5, 6]])
    assert list(ds.y_train) == [0, 1, 2] and ds.name == "d.csv"
    gz = tmp_path / "r.csv.gz"
    gz.write_bytes(gzip.compress(b"\xef\xbb\xbfx,t1,t2\n1,2,3\n4,5,6\n"))  # with a byte-order mark
    ds = load_dataset(str(gz), label_column=["t1", "t2"], output="linear", validation=0)
    assert ds.y_train.tolist() == [[2, 3], [5, 6]] and ds.X_train.tolist() == [[1], [4]]


def test_csv_without_label_column_takes_the_last_column_as_train_help_says(tmp_path):
    from click.testing import CliRunner

    from memtrain.cli import main

    assert "CSV data set (default: the last)" in " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(10)))
    ds = load_dataset(str(p), validation=0, dtype="float64")
    assert ds.n_features == 2 and sorted(ds.y_train.tolist()) == [0] * 5 + [1] * 5
    np.testing.assert_array_equal(ds.X_train[:, 1], 2 * ds.X_train[:, 0])


def test_csv_slow_reader_agrees_with_fast_path(tmp_path, monkeypatch):
    import memtrain.data.csvfile as data

    p = tmp_path / "d.csv"
    p.write_text("a,label,b\n" + "".join(f"{i},{i % 3},{i / 7}\n" for i in range(50)) + "\n")
    fast = load_dataset(str(p), label_column="label", validation=0.2, dtype="float64")
    monkeypatch.setattr(data, "_CSV_CHUNK", 16)  # several chunks
    monkeypatch.setattr(data, "_csv_fast", lambda *a: None)
    slow = load_dataset(str(p), label_column="label", validation=0.2, dtype="float64")
    np.testing.assert_array_equal(fast.X_train, slow.X_train)
    np.testing.assert_array_equal(fast.y_val, slow.y_val)


def test_csv_errors(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,label\n1,0\n2,1\n\n3,1,9\n")
    with pytest.raises(ValueError, match=r"d\.csv: line 5: 3 columns; expected 2 as in the header row"):
        load_dataset(str(p), label_column="label")
    p.write_text("a,label\n1,0\nx,1\n")
    with pytest.raises(ValueError, match=r"d\.csv: line 3, column 'a': 'x' is not a number"):
        load_dataset(str(p), label_column="label")
    p.write_text("a,label\n1,0\n")
    with pytest.raises(ValueError, match=r"d\.csv: label_column: 'y' not found; columns are a, label"):
        load_dataset(str(p), label_column="y")
    p.write_text("only\n1\n2\n")
    with pytest.raises(ValueError, match=r"d\.csv: header row: one column \(only\); expected feature columns and a "
                                         r"label column \(the last, unless label_column names it\)"):
        load_dataset(str(p))
    p.write_text("1,0\n2,1\n")
    with pytest.raises(ValueError, match=r"header row: the first line is all numbers"):
        load_dataset(str(p), label_column="0")
    p.write_text("")
    with pytest.raises(ValueError, match=r"header row: file is empty"):
        load_dataset(str(p), label_column="label")
    p.write_text("a,label\n")
    with pytest.raises(ValueError, match=r"d\.csv: X: no rows"):
        load_dataset(str(p), label_column="label")
    p.write_bytes(b"a,label\n\xff\xfe,1\n")
    with pytest.raises(ValueError, match=r"d\.csv: file cannot be read as CSV"):
        load_dataset(str(p), label_column="label")
    with pytest.raises(ValueError, match=r"label_column: only \.csv sources have columns"):
        load_dataset("synthetic:classification(10,2,2)", label_column="label")


# -- synthetic ---------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_shaped():
    a = load_dataset("synthetic:classification(300, 5, 4)", seed=3)
    b = load_dataset("synthetic:classification(300,5,4)", seed=3)
    c = load_dataset("synthetic:classification(300,5,4)", seed=4)
    assert a.name == "synthetic:classification(300,5,4)" and a.n_outputs == 4 and a.n_features == 5
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.X_train, c.X_train)
    y = np.concatenate([a.y_train, a.y_val])
    assert np.bincount(y).tolist() == [75] * 4  # balanced
    # blobs: the nearest class centre (estimated on train) labels most validation rows
    centres = np.stack([a.X_train[a.y_train == k].mean(axis=0) for k in range(4)])
    nearest = np.argmin(((a.X_val[:, None, :] - centres) ** 2).sum(axis=2), axis=1)
    assert (nearest == a.y_val).mean() > 0.8
    # float64 runs see the same samples as float32 runs
    d64 = load_dataset("synthetic:classification(300,5,4)", seed=3, dtype="float64")
    np.testing.assert_array_equal(d64.X_train, a.X_train.astype(np.float64))
    r = load_dataset("synthetic:regression(200,6,3)", output="linear", validation=0.25, n_outputs=3)
    assert r.y_train.shape == (150, 3) and r.y_train.dtype == np.float32 and r.task == "regression"
    assert 0.5 < r.y_train.std() < 2.0


@pytest.mark.parametrize("source, message", [
    ("synthetic:classification(10,2)", r"takes 3 integers, got 2"),
    ("synthetic:classification(10,2.5,3)", r"d must be a positive integer, got '2\.5'"),
    ("synthetic:classification(10,2,1)", r"classes must be at least 2, got 1"),
    ("synthetic:regression(0,2,1)", r"n must be at least 1, got 0"),
    ("synthetic:regression(10,-2,1)", r"d must be a positive integer, got '-2'"),
    ("synthetic:clusters(10,2,2)", r"expected synthetic:classification\(n, d, classes\) or synthetic:regression"),
])
def test_synthetic_parse_errors(source, message):
    with pytest.raises(ValueError, match=r"^dataset: .*" + message):
        load_dataset(source)


# -- validation of data and parameters ---------------------------------------------------


def test_array_errors_name_file_and_field(tmp_path):
    X, y = small(10)

    def load(name="e.npz", **kw):
        arrays = {"X": X, "y": y} | {k: v for k, v in kw.items() if k.startswith(("X", "y"))}
        opts = {k: v for k, v in kw.items() if k not in arrays}
        return load_dataset(str(npz(tmp_path, name, **arrays)), **opts)

    with pytest.raises(ValueError, match=r"e\.npz: X: shape \(10,\); expected a 2-D array"):
        load(X=X[:, 0])
    with pytest.raises(ValueError, match=r"e\.npz: X: no rows"):
        load(X=X[:0], y=y[:0])
    with pytest.raises(ValueError, match=r"e\.npz: y: 9 rows, but X has 10; expected one label per row"):
        load(y=y[:9])
    Xbad = X.copy()
    Xbad[2, 1], Xbad[7, 0], Xbad[8, 2] = np.nan, np.inf, -np.inf
    with pytest.raises(ValueError, match=r"e\.npz: X: 1 NaN and 2 Inf values \(first in row 2\)"):
        load(X=Xbad)
    with pytest.raises(ValueError, match=r"e\.npz: y: 1 NaN and 0 Inf values \(first in row 4\)"):
        load(y=np.where(np.arange(10) == 4, np.nan, y), output="linear")
    with pytest.raises(ValueError, match=r"e\.npz: y: 1 non-integer class labels \(first 1\.5 in row 3\)"):
        load(y=np.where(np.arange(10) == 3, 1.5, y))
    with pytest.raises(ValueError, match=r"e\.npz: y: 3 labels out of range \(first 2 in row 2\); "
                                         r"expected integers in \[0, 1\] for the model's 2 output units"):
        load(n_outputs=2)
    with pytest.raises(ValueError, match=r"e\.npz: y: 1 labels out of range \(first -1 in row 0\)"):
        load(y=np.where(np.arange(10) == 0, -1, y))
    with pytest.raises(ValueError, match=r"e\.npz: y: label 2\.0 in row 2; a sigmoid output expects labels 0 or 1"):
        load(y=y.astype(float), output="sigmoid")
    with pytest.raises(ValueError, match=r"e\.npz: y: 1 target columns; expected 2 to match"):
        load(output="linear", n_outputs=2)
    with pytest.raises(ValueError, match=r"e\.npz: X: dtype <U1 is not numeric"):
        load(X=np.full((10, 2), "a"))
    with pytest.raises(ValueError, match=r"e\.npz: X_test: 2 features, but the training data"):
        load(X_test=X[:3, :2], y_test=y[:3])
    with pytest.raises(ValueError, match=r"e\.npz: y_val: X_val is present without it"):
        load(X_val=X)
    with pytest.raises(ValueError, match=r"e\.npz: X_val: 1 NaN"):
        load(X_val=Xbad[2:3], y_val=y[:1])
    with pytest.raises(ValueError, match=r"e\.npz: X_train: 10 values overflow float16 when converted "
                                         r"\(first in row 2\); expected magnitudes below 65504"):
        load(X=X * 1e5, dtype="float16")
    with pytest.raises(ValueError, match=r"e\.npz: X: \d+ values overflow float32 when converted"):
        load(X=np.where(X > 1, 1e300, X))


def test_unreadable_files(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.npz: file cannot be read as \.npz"):
        load_dataset(str(p))
    with pytest.raises(ValueError, match=r"n\.npz: arrays: expected X and y, found X, labels"):
        load_dataset(str(npz(tmp_path, "n.npz", X=np.ones((2, 2)), labels=np.ones(2))))
    obj = tmp_path / "o.npz"
    np.savez(obj, X=np.array([{"a": 1}, None], dtype=object), y=np.ones(2))
    with pytest.raises(ValueError, match=r"o\.npz: X: cannot be read \(.*allow_pickle"):
        load_dataset(str(obj))
    for missing in ("gone.npz", "gone.csv"):
        with pytest.raises(ValueError, match=rf"{missing}: file not found"):
            load_dataset(str(tmp_path / missing))
    with pytest.raises(ValueError, match=r"^dataset: unknown source 'data\.txt'; expected one of: digits; "):
        load_dataset("data.txt")


@pytest.mark.parametrize("kwargs, message", [
    ({"validation": 1.0}, r"^validation: expected a fraction in \[0, 1\), got 1\.0"),
    ({"validation": "0.2"}, r"^validation: expected a fraction"),
    ({"test": -0.1}, r"^test: expected a fraction in \[0, 1\), got -0\.1"),
    ({"validation": 0.5, "test": 0.5}, r"^validation, test: 0\.5 \+ 0\.5 leaves nothing to train on"),
    ({"dtype": "int32"}, r"^dtype: expected one of float16, float32, float64"),
    ({"output": "tanh"}, r"^output: expected one of softmax, sigmoid, linear"),
    ({"n_outputs": 1}, r"^n_outputs: a softmax output needs at least 2 units"),
    ({"output": "sigmoid", "n_outputs": 2}, r"^n_outputs: a sigmoid output has exactly 1 unit"),
    ({"seed": -1}, r"^seed: expected a non-negative integer"),
    ({"standardize": "yes"}, r"^standardize: expected true or false"),
    ({"label_column": 3}, r"^label_column: expected a column name"),
])
def test_parameter_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("synthetic:classification(20,2,2)", **kwargs)


def test_tiny_sets_keep_a_training_row(tmp_path):
    p = npz(tmp_path, X=np.ones((2, 2)), y=np.array([0, 1]))
    ds = load_dataset(str(p), validation=0.01)  # a non-zero fraction gets at least one row
    assert len(ds.X_train) == 1 and len(ds.X_val) == 1
    with pytest.raises(ValueError, match=r"validation, test: .* has 2 rows; 1 for validation and 1 for test"):
        load_dataset(str(p), validation=0.1, test=0.1)


def test_import_memtrain_data_does_not_import_sklearn():
    code = "import sys, memtrain.data; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_label_layouts_are_the_output_units():
    from memtrain import data
    from memtrain.nn.losses import OUTPUTS

    assert data.OUTPUTS == tuple(OUTPUTS)
