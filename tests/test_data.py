"""Tests for hyperloom.data: the IDX reader, the dataset loaders and the task scenarios."""

from __future__ import annotations

import doctest
import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hyperloom.data as hd
from hyperloom.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    Dataset,
    describe_tasks,
    fashion_mnist_available,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    permuted,
    read_idx,
    rotate_images,
    rotated,
    split_by_classes,
    write_idx,
)
from hyperloom.data import datasets as datasets_module
from hyperloom.data import idx as idx_module
from hyperloom.data import scenarios as scenarios_module

DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)


def _toy_dataset(n_classes: int = 10, per_class_train: int = 6, per_class_test: int = 3) -> Dataset:
    """A small dataset with every class present: 6x6 random images."""
    gen = torch.Generator().manual_seed(1)
    y_train = torch.arange(n_classes).repeat(per_class_train)
    y_test = torch.arange(n_classes).repeat(per_class_test)
    x_train = torch.rand(len(y_train), 1, 6, 6, generator=gen)
    x_test = torch.rand(len(y_test), 1, 6, 6, generator=gen)
    classes = tuple(f"c{i}" for i in range(n_classes))
    return Dataset("toy", x_train, y_train, x_test, y_test, classes)


def _snapshot(ds) -> list[torch.Tensor]:
    return [t.clone() for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test)]


def _assert_unchanged(ds, snapshot) -> None:
    for before, after in zip(snapshot, (ds.x_train, ds.y_train, ds.x_test, ds.y_test), strict=True):
        assert torch.equal(before, after)


# ---------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 4), (2, 3, 5), (2, 1, 3, 2)])
def test_idx_round_trip(tmp_path, compress, dtype, shape):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        array = rng.standard_normal(shape).astype(dtype)
    path = tmp_path / "data-idx"
    write_idx(path, array, gzip=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_idx_header_layout_is_big_endian(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int16))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 2])
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert raw[12:14] == (1).to_bytes(2, "big")
    assert len(raw) == 12 + 6 * 2


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_without_suffix = tmp_path / "images-idx2-ubyte"
    plain_with_suffix = tmp_path / "labels-idx2-ubyte.gz"
    write_idx(gz_without_suffix, array, gzip=True)
    write_idx(plain_with_suffix, array, gzip=False)
    np.testing.assert_array_equal(read_idx(gz_without_suffix), array)
    np.testing.assert_array_equal(read_idx(plain_with_suffix), array)


def test_idx_reads_known_bytes(tmp_path):
    # Hand-written file: 0x0C int32, 1 dim of 2, values -1 and 258 big-endian.
    path = tmp_path / "hand"
    path.write_bytes(bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + bytes([255] * 4) + bytes([0, 0, 1, 2]))
    np.testing.assert_array_equal(read_idx(path), np.array([-1, 258], dtype=np.int32))


def _valid_bytes() -> bytes:
    return bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00" + _valid_bytes()[2:], "bad IDX magic"),
        (b"\x00\x00\x07" + _valid_bytes()[3:], "unknown IDX dtype code 0x07"),
        (_valid_bytes()[:-1], "truncated data"),
        (_valid_bytes()[:10], "truncated header"),
        (b"\x00\x00", "too short"),
        (_valid_bytes() + b"\x00\x00", "2 trailing bytes"),
    ],
    ids=["magic", "dtype", "truncated", "header", "short", "trailing"],
)
def test_idx_corruption_raises_naming_file(tmp_path, compress, raw, message):
    path = tmp_path / "broken-idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_corrupt_gzip_raises(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(_valid_bytes())[:-6])
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.bool_, np.complex64])
def test_write_idx_rejects_dtypes_without_code(tmp_path, dtype):
    with pytest.raises(TypeError, match=str(np.dtype(dtype))):
        write_idx(tmp_path / "x", np.zeros(3, dtype=dtype))


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST from a fake folder


def _write_fake_fashion(folder: Path, n_train=20, n_test=10, size=5, gz=(True, False, False, True)):
    """Four IDX files like Fashion-MNIST's, some gzipped; returns the arrays written."""
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, 0] = 255
    folder.mkdir(parents=True, exist_ok=True)
    for (stem, array), compress in zip(arrays.items(), gz, strict=True):
        write_idx(folder / (stem + ".gz" if compress else stem), array, gzip=compress)
    return arrays


def test_load_fashion_mnist_from_fake_folder(tmp_path):
    arrays = _write_fake_fashion(tmp_path)
    ds = load_fashion_mnist(tmp_path)
    assert ds.name == "fashion-mnist"
    assert ds.classes == FASHION_MNIST_CLASSES
    assert ds.num_classes == 10
    assert ds.input_shape == (1, 5, 5)
    assert ds.x_train.shape == (20, 1, 5, 5) and ds.x_test.shape == (10, 1, 5, 5)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float()[:, None] / 255
    assert torch.allclose(ds.x_train, expected)
    assert float(ds.x_train.max()) == 1.0 and float(ds.x_train.min()) >= 0.0
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert "train=20" in repr(ds) and "test=10" in repr(ds)


def test_fashion_mnist_dir_from_environment(tmp_path, monkeypatch):
    _write_fake_fashion(tmp_path / "fm")
    assert not fashion_mnist_available(tmp_path)
    assert fashion_mnist_available(tmp_path / "fm")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "fm"))
    assert fashion_mnist_available()
    assert len(load_fashion_mnist().y_train) == 20
    assert load_dataset("auto").name == "fashion-mnist"


def test_load_fashion_mnist_missing_files_message(tmp_path):
    _write_fake_fashion(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert not fashion_mnist_available(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(tmp_path)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte" not in message
    assert str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "github.com/zalandoresearch/fashion-mnist" in message
    assert "--data-dir" in message


def test_load_fashion_mnist_count_mismatch(tmp_path):
    _write_fake_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9, dtype=np.uint8), gzip=True)
    with pytest.raises(ValueError, match=r"10 images .* 9 labels"):
        load_fashion_mnist(tmp_path)


def test_load_dataset_auto_falls_back_to_digits(tmp_path):
    ds = load_dataset("auto", data_dir=tmp_path)
    assert ds.name == "digits"


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="'nope'") as info:
        load_dataset("nope")
    for name in ("auto", "fashion-mnist", "digits"):
        assert name in str(info.value)


@pytest.mark.skipif(not fashion_mnist_available(FASHION_MNIST_DIR), reason="no Debian files")
def test_real_fashion_mnist():
    ds = load_fashion_mnist(FASHION_MNIST_DIR)
    assert (len(ds.y_train), len(ds.y_test)) == (60000, 10000)
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.y_train.bincount().tolist() == [6000] * 10
    assert ds.y_test.bincount().tolist() == [1000] * 10
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0


# ---------------------------------------------------------------------------------------------
# Digits and Dataset


def _rows(x: torch.Tensor, y: torch.Tensor) -> list[tuple]:
    return sorted(tuple(row) for row in torch.cat([x.flatten(1), y[:, None].float()], 1).tolist())


def test_load_digits_shapes_ranges_and_partition():
    from sklearn.datasets import load_digits as sk_load_digits

    ds = load_digits()
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert (len(ds.y_train), len(ds.y_test)) == (1347, 450)
    assert ds.x_train.dtype == torch.float32 and ds.y_test.dtype == torch.int64
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    # Train and test together are exactly the 1797 sklearn images: disjoint and covering.
    bunch = sk_load_digits()
    x_all = torch.from_numpy(bunch.images).float()[:, None] / 16
    y_all = torch.from_numpy(bunch.target).long()
    x_split = torch.cat([ds.x_train, ds.x_test])
    y_split = torch.cat([ds.y_train, ds.y_test])
    assert _rows(x_split, y_split) == _rows(x_all, y_all)
    # Stratified: each class puts round(25 %) of its images in the test split.
    expected = [round(0.25 * int(n)) for n in y_all.bincount()]
    assert ds.y_test.bincount().tolist() == expected


def test_load_digits_reproducible():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)
    assert len(load_digits(test_fraction=0.5).y_test) in range(895, 902)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_load_digits_bad_fraction(fraction):
    with pytest.raises(ValueError, match=re.escape(str(fraction))):
        load_digits(test_fraction=fraction)


def test_subset_sizes_balance_and_reproducible():
    ds = load_digits()
    before = _snapshot(ds)
    small = ds.subset(n_train=100, n_test=30, seed=3)
    assert (len(small.y_train), len(small.y_test)) == (100, 30)
    assert small.classes == ds.classes and small.name == ds.name
    assert int(small.y_train.bincount(minlength=10).min()) >= 9
    assert small.y_test.bincount(minlength=10).tolist() == [3] * 10
    again = ds.subset(n_train=100, n_test=30, seed=3)
    assert torch.equal(small.x_train, again.x_train) and torch.equal(small.y_test, again.y_test)
    other = ds.subset(n_train=100, n_test=30, seed=4)
    assert not torch.equal(small.x_train, other.x_train)
    # Every chosen example is one of the originals, with its own label.
    assert set(_rows(small.x_train, small.y_train)) <= set(_rows(ds.x_train, ds.y_train))
    full = ds.subset()
    assert torch.equal(full.x_train, ds.x_train) and torch.equal(full.y_test, ds.y_test)
    _assert_unchanged(ds, before)


def test_subset_too_large():
    ds = _toy_dataset()
    with pytest.raises(ValueError, match="n_train=61"):
        ds.subset(n_train=61)
    with pytest.raises(ValueError, match="n_test=-1"):
        ds.subset(n_test=-1)


def test_dataset_validation():
    ds = _toy_dataset()
    with pytest.raises(ValueError, match="float32"):
        Dataset("bad", ds.x_train.double(), ds.y_train, ds.x_test, ds.y_test, ds.classes)
    with pytest.raises(ValueError, match="y_test"):
        Dataset("bad", ds.x_train, ds.y_train, ds.x_test, ds.y_test[:-1], ds.classes)
    with pytest.raises(ValueError, match="outside"):
        Dataset("bad", ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.classes[:5])


# ---------------------------------------------------------------------------------------------
# Scenarios


def test_split_by_classes_task_incremental():
    ds = _toy_dataset()
    before = _snapshot(ds)
    tasks = split_by_classes(ds, n_tasks=5)
    assert len(tasks) == 5
    assert [t.id for t in tasks] == list(range(5))
    seen = [c for t in tasks for c in t.classes]
    assert sorted(seen) == list(range(10)) and len(set(seen)) == 10  # disjoint and covering
    assert sum(len(t.y_train) for t in tasks) == len(ds.y_train)
    assert sum(len(t.y_test) for t in tasks) == len(ds.y_test)
    for t in tasks:
        assert t.num_classes == 2
        assert sorted(t.y_train.unique().tolist()) == [0, 1]
        # Each example is an original image of the class its local label names.
        for x, y in zip(t.x_train, t.y_train, strict=True):
            match = (ds.x_train == x).flatten(1).all(1)
            assert ds.y_train[match].tolist() == [t.classes[int(y)]]
    _assert_unchanged(ds, before)


def test_split_by_classes_class_incremental_and_order():
    ds = _toy_dataset()
    order = [9, 3, 0, 4, 1, 8, 2, 7, 6, 5]
    tasks = split_by_classes(ds, classes_per_task=5, relabel=False, class_order=order)
    assert [t.classes for t in tasks] == [(9, 3, 0, 4, 1), (8, 2, 7, 6, 5)]
    for t in tasks:
        assert set(t.y_train.tolist()) == set(t.classes) == set(t.y_test.tolist())
        assert t.num_classes == 10
    relabelled = split_by_classes(ds, classes_per_task=5, class_order=order)
    assert relabelled[0].y_train[relabelled[0].y_train == 0].numel() == 6  # class 9 -> label 0
    assert torch.equal(tasks[0].y_train == 9, relabelled[0].y_train == 0)


def test_split_by_classes_defaults_and_subset_order():
    ds = _toy_dataset()
    assert [t.classes for t in split_by_classes(ds)] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    tasks = split_by_classes(ds, 2, class_order=[1, 2, 3, 4])
    assert [t.classes for t in tasks] == [(1, 2), (3, 4)]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n_tasks": 3}, r"10 classes .*n_tasks=3"),
        ({"classes_per_task": 4}, r"10 classes .*classes_per_task=4"),
        ({"n_tasks": 2, "classes_per_task": 4}, r"n_tasks=2 x classes_per_task=4 = 8"),
        ({"n_tasks": 0}, "n_tasks must be at least 1, got 0"),
        ({"class_order": [0, 0, 1, 2]}, "repeats"),
        ({"class_order": [0, 10]}, r"\[10\]"),
    ],
)
def test_split_by_classes_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        split_by_classes(_toy_dataset(), **kwargs)


def _indexed_dataset() -> Dataset:
    """Images whose pixel values encode (image, position), so permutations can be read off."""
    d = 36
    x = torch.arange(12 * d, dtype=torch.float32).reshape(12, 1, 6, 6) / (12 * d)
    y = torch.arange(12) % 4
    return Dataset("indexed", x[:8], y[:8], x[8:], y[8:], ("a", "b", "c", "d"))


def test_permuted_is_a_reproducible_true_permutation():
    ds = _indexed_dataset()
    before = _snapshot(ds)
    tasks = permuted(ds, 4, seed=7)
    assert len(tasks) == 4 and [t.classes for t in tasks] == [(0, 1, 2, 3)] * 4
    assert torch.equal(tasks[0].x_train, ds.x_train) and torch.equal(tasks[0].x_test, ds.x_test)
    perms = []
    for t in tasks:
        assert torch.equal(t.y_train, ds.y_train) and torch.equal(t.y_test, ds.y_test)
        for x_task, x_orig in ((t.x_train, ds.x_train), (t.x_test, ds.x_test)):
            # A true permutation: each image holds the same values, rearranged.
            assert torch.equal(x_task.flatten(1).sort(1).values, x_orig.flatten(1).sort(1).values)
        # Pixel values encode positions: recover the permutation, the same for every image.
        pos = (t.x_train.flatten(1) * 12 * 36).round().long() % 36  # (N, 36)
        assert (pos == pos[0]).all()
        pos_test = (t.x_test.flatten(1) * 12 * 36).round().long() % 36
        assert (pos_test == pos[0]).all()
        perms.append(pos[0])
    assert len({tuple(p.tolist()) for p in perms}) == 4
    again = permuted(ds, 4, seed=7)
    assert all(torch.equal(a.x_train, b.x_train) for a, b in zip(tasks, again, strict=True))
    other = permuted(ds, 4, seed=8)
    assert not torch.equal(tasks[1].x_train, other[1].x_train)
    # first_identity only replaces task 0; the other permutations are unchanged.
    no_identity = permuted(ds, 4, seed=7, first_identity=False)
    assert not torch.equal(no_identity[0].x_train, ds.x_train)
    assert torch.equal(no_identity[2].x_test, tasks[2].x_test)
    _assert_unchanged(ds, before)


def test_rotated_zero_is_identity():
    ds = _toy_dataset()
    before = _snapshot(ds)
    tasks = rotated(ds, [0, 30, -45])
    assert [t.name for t in tasks] == ["rotated-0", "rotated-30", "rotated--45"]
    assert torch.allclose(tasks[0].x_train, ds.x_train, atol=1e-5, rtol=0)
    assert torch.allclose(tasks[0].x_test, ds.x_test, atol=1e-5, rtol=0)
    assert not torch.allclose(tasks[1].x_train, ds.x_train, atol=1e-2)
    for t in tasks:
        assert t.x_train.shape == ds.x_train.shape
        assert torch.equal(t.y_train, ds.y_train)
        assert t.classes == tuple(range(10))
    _assert_unchanged(ds, before)


def test_rotate_90_moves_pixel_counter_clockwise():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 3] = 1.0  # row 0, column 3: top edge, right of centre
    ccw = rotate_images(x, 90.0)
    # Counter-clockwise about (2, 2): (row, col) -> (4 - col, row) = (1, 0).
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 1, 0] = 1.0
    assert torch.allclose(ccw, expected, atol=1e-5)
    cw = rotate_images(x, -90.0)
    expected_cw = torch.zeros(1, 1, 5, 5)
    expected_cw[0, 0, 3, 4] = 1.0
    assert torch.allclose(cw, expected_cw, atol=1e-5)


def test_rotate_180_of_non_square_image_flips_both_axes():
    x = torch.rand(2, 3, 4, 7)
    assert torch.allclose(rotate_images(x, 180.0), x.flip(-1, -2), atol=1e-5)
    assert torch.allclose(rotate_images(x, 0.0, batch_size=1), x, atol=1e-5)


def test_scenarios_accept_duck_typed_datasets():
    class Plain:
        pass

    ds = _toy_dataset()
    plain = Plain()
    for attr in ("x_train", "y_train", "x_test", "y_test", "classes"):
        setattr(plain, attr, getattr(ds, attr))
    assert len(split_by_classes(plain, 5)) == 5
    with pytest.raises(TypeError, match="classes"):
        permuted(object(), 2)


def test_describe_tasks():
    tasks = split_by_classes(_toy_dataset(), n_tasks=5)
    text = describe_tasks(tasks)
    lines = text.splitlines()
    assert lines[0].split() == ["id", "name", "classes", "n_train", "n_test"]
    assert len(lines) == 6
    assert lines[3].split() == ["2", "split-2", "4,5", "12", "6"]
    assert not text.endswith("\n")


# ---------------------------------------------------------------------------------------------
# Packaging: lean import, runnable examples


def test_import_is_lean():
    code = (
        "import sys, hyperloom.data; "
        "bad = [m for m in ('sklearn', 'matplotlib', 'scipy') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_are_exported():
    for name in (
        "Dataset",
        "Task",
        "read_idx",
        "write_idx",
        "load_fashion_mnist",
        "fashion_mnist_available",
        "load_digits",
        "load_dataset",
        "split_by_classes",
        "permuted",
        "rotated",
        "describe_tasks",
        "FASHION_MNIST_DIR",
    ):
        assert hasattr(hd, name), name
    assert FASHION_MNIST_DIR == "/usr/share/datasets/fashion-mnist"


@pytest.mark.parametrize("module", [idx_module, datasets_module, scenarios_module])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_docs_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {})
