import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from aigc.data.images import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, image_grid, load_images, parse_idx
from aigc.errors import UserError


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_folder(folder, images: np.ndarray, labels: np.ndarray, gz: bool = True, prefix: str = "train"):
    suffix = ".gz" if gz else ""
    opener = gzip.open if gz else open
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(idx_bytes(IDX_IMAGES_MAGIC, images))
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(idx_bytes(IDX_LABELS_MAGIC, labels))


def test_parse_idx_round_trip():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert (parse_idx(idx_bytes(IDX_IMAGES_MAGIC, array), IDX_IMAGES_MAGIC, "x") == array).all()


def test_parse_idx_rejects_wrong_magic():
    array = np.zeros((2, 3, 4), dtype=np.uint8)
    with pytest.raises(UserError, match="magic"):
        parse_idx(idx_bytes(0x00000D03, array), IDX_IMAGES_MAGIC, "x")


def test_parse_idx_rejects_truncated_body():
    raw = idx_bytes(IDX_IMAGES_MAGIC, np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(UserError, match="truncated"):
        parse_idx(raw[:-5], IDX_IMAGES_MAGIC, "x")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_scales_to_unit_range(tmp_path, gz):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[1] = 255
    images[2, 0, 0] = 128
    write_idx_folder(tmp_path, images, np.array([0, 2, 1]), gz=gz)
    data = load_images(str(tmp_path))
    assert data.images.shape == (3, 1, 28, 28)
    assert data.images[0].max() == -1 and data.images[1].min() == 1
    assert data.images[2, 0, 0, 0].item() == pytest.approx(128 / 127.5 - 1, abs=1e-6)
    assert data.labels.tolist() == [0, 2, 1] and data.num_classes == 3


def test_idx_folder_prefers_the_training_split(tmp_path):
    write_idx_folder(tmp_path, np.zeros((2, 28, 28)), np.array([0, 1]), prefix="t10k")
    write_idx_folder(tmp_path, np.zeros((5, 28, 28)), np.array([0, 1, 2, 3, 4]), prefix="train")
    assert len(load_images(str(tmp_path))) == 5
    assert len(load_images(str(tmp_path / "t10k-images-idx3-ubyte.gz"))) == 2


def test_mnist5k_is_the_bundled_training_subset():
    data = load_images("mnist5k")
    assert data.images.shape == (5000, 1, 28, 28)
    assert data.labels.bincount().tolist() == [500] * 10
    assert data.images.min() == -1 and data.images.max() == 1


def test_shared_mnist_test_set(shared_data):
    data = load_images(str(shared_data / "mnist"))
    assert data.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_image_folder_with_classes_resized_and_converted(tmp_path):
    for name, colour in [("cats", (255, 0, 0)), ("dogs", (0, 0, 255))]:
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (40, 40), colour).save(tmp_path / name / f"{i}.png")
    data = load_images(str(tmp_path), image_size=32)
    assert data.images.shape == (4, 3, 32, 32)
    assert data.class_names == ["cats", "dogs"] and data.labels.tolist() == [0, 0, 1, 1]
    assert data.images[0, 0].mean() == pytest.approx(1.0) and data.images[0, 2].mean() == pytest.approx(-1.0)
    grey = load_images(str(tmp_path), image_size=28, channels=1)
    assert grey.images.shape == (4, 1, 28, 28)


def test_grid_layout():
    images = torch.linspace(-1, 1, 6).view(6, 1, 1, 1).expand(6, 1, 2, 2)
    grid = image_grid(images, nrow=3, padding=1)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[4, 7, 0] == 255
