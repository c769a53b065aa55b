"""``aigc gan restore``: repair damaged images with a trained GAN run (inpainting, super-resolution,
denoising by GAN inversion; see :mod:`aigc.gan.restore`).

Input images are read with Pillow and must have the run's image size (the small size with
``--upscale``): a wrong size is an error, never resized, since resizing would change the very
pixels that are known. A colour image given to a grey model (or the reverse) is converted, with
a warning. Outputs are PNGs; an input file is never written over.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aigc import runs
from aigc.data.images import IMAGE_SUFFIXES, to_uint8, to_unit_range
from aigc.devices import resolve_device
from aigc.errors import UserError
from aigc.gan.config import GanRestoreConfig, parse_box
from aigc.gan.generation import sample_labels
from aigc.gan.loading import load_gan
from aigc.gan.restore import (
    Downsample,
    InversionSettings,
    Mask,
    Noise,
    box_mask,
    restore,
)
from aigc.outputs import output_dir, output_file

CHUNK = 256  # images restored at a time (each with --restarts starts)


def restore_command(cfg: GanRestoreConfig) -> list[Path]:
    inputs = input_files(cfg)
    outputs = output_paths(cfg, inputs)  # before any work: a bad --out is one line
    device = resolve_device(cfg.device)
    gan = load_gan(cfg.run, cfg.ema, device)
    compression = gan.run_config.get("compression")
    if compression:  # inversion takes gradients through the generator: int8 kernels have none, bf16 too few bits
        raise UserError(f"{cfg.run} holds a {compression.get('quantize')} generator from aigc compress; restore "
                        f"with the float run it came from ({compression.get('source')})")
    model_cfg = gan.model_config
    if cfg.label is not None:
        sample_labels(model_cfg, 1, cfg.label)  # an unconditional run or a class out of range: one line
    degradation, size = degradation_of(cfg, model_cfg.image_size)
    seen = torch.stack([read_image(path, model_cfg.channels, size) for path in inputs])  # (N, C, size, size)
    if isinstance(degradation, Mask):
        seen = degradation.measure(seen)  # the missing pixels' values are not used
        degradation = Mask(degradation.known.to(device))  # beside the generator
    settings = InversionSettings(steps=cfg.steps, restarts=cfg.restarts, average=cfg.average, lr=cfg.lr,
                                 seed=cfg.seed, amp=cfg.amp,
                                 finetune_steps=cfg.finetune_steps if cfg.finetune_generator else 0)
    repaired = torch.cat([restore(gan.generator, model_cfg, degradation.take(rows), seen[rows].to(device),
                                  settings, cfg.label, cfg.paste).images.cpu()
                          for rows in torch.arange(len(inputs)).split(CHUNK)])  # (N, C, H, W)
    for (out, compare), shown, image in zip(outputs, seen, repaired):
        write_png(image, out)
        write_png(side_by_side(view_of(degradation, shown, model_cfg.image_size), image), compare)
    pasted = "known pixels pasted back" if cfg.paste and not isinstance(degradation, Noise) else "nothing pasted back"
    where = outputs[0][0] if cfg.image else cfg.out
    print(f"wrote {len(inputs)} repaired image(s) to {where} ({pasted}), input | repaired in {outputs[0][1].name}"
          + ("" if cfg.image else " ..."))
    return [out for out, _ in outputs]


# ------------------------------------------------------------------------------ files


def input_files(cfg: GanRestoreConfig) -> list[Path]:
    """The image to repair, or the images of the ``--images`` folder (sorted by name)."""
    if cfg.image is not None:
        path = Path(cfg.image).expanduser()
        open_image(path)  # before any work: a missing or unreadable file is one line
        return [path]
    folder = Path(cfg.images).expanduser()
    if not folder.is_dir():
        raise UserError(f"--images {folder}: {'is a file, not a folder' if folder.exists() else 'no such folder'}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"--images {folder}: no PNG/JPEG images in this folder")
    return files


def output_paths(cfg: GanRestoreConfig, inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(repaired, input | repaired) for each input: OUT and OUT-compare.png, or FOLDER/NAME.png and
    FOLDER/compare/NAME.png. Refused: anything that would write over an input."""
    if cfg.image is not None:
        out = output_file(cfg.out, "--out")
        pairs = [(out, output_file(out.with_name(f"{out.stem}-compare.png"), "--out"))]
    else:
        folder = output_dir(cfg.out, "--out")
        pairs = [(folder / f"{p.stem}.png", folder / "compare" / f"{p.stem}.png") for p in inputs]
        if len({out for out, _ in pairs}) < len(pairs):
            raise UserError(f"--images {cfg.images}: two images share a name (e.g. a.png and a.jpg); rename one")
    given = {os.path.realpath(p) for p in [*inputs, *([cfg.mask] if cfg.mask else [])]}
    for path in (p for pair in pairs for p in pair):
        if os.path.realpath(path) in given:
            raise UserError(f"--out {cfg.out} would overwrite the input {path}; choose another name")
    return pairs


def open_image(path: Path, flag: str = "--image"):
    """A Pillow image, fully read; a file that is not an image is a UserError."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UserError(f"{flag} {path}: {'is a folder, not an image' if path.is_dir() else 'no such file'}")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.convert("RGBA") if opened.mode == "P" else opened.copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def read_image(path: Path, channels: int, size: int) -> torch.Tensor:
    """A PNG/JPEG as (channels, size, size) in [-1, 1]; another size is a UserError."""
    picture = open_image(path)
    if picture.size != (size, size):  # checked first: a bad input gets one line, no warning before it
        raise UserError(f"{path} is {picture.size[0]}x{picture.size[1]}; this needs {size}x{size} images "
                        "(the run's image size, divided by --upscale when given); resize it first")
    grey = picture.mode in ("L", "LA", "1", "I", "I;16", "F")
    if grey != (channels == 1):
        print(f"aigc: warning: {path} is {'grey' if grey else 'colour'}; converted to "
              f"{'grey' if channels == 1 else 'RGB'} for this {channels}-channel model", file=sys.stderr)
    pixels = np.asarray(picture.convert("L" if channels == 1 else "RGB"))  # (H, W) or (H, W, 3) uint8
    return to_unit_range(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))


def read_mask(path: Path, size: int) -> torch.Tensor:
    """Known pixels of a mask image (white, >= 128, is missing): (1, 1, size, size) bool."""
    picture = open_image(path, "--mask")
    if picture.size != (size, size):
        raise UserError(f"--mask {path} is {picture.size[0]}x{picture.size[1]}, the images {size}x{size}")
    return torch.from_numpy(np.asarray(picture.convert("L")) < 128)[None, None]


def write_png(image: torch.Tensor, path: Path) -> None:
    """(C, H, W) in [-1, 1] -> a PNG, atomically (the folder made if needed)."""
    from PIL import Image

    pixels = to_uint8(image[None])[0]  # (H, W, C) uint8
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


# ------------------------------------------------------------------------------ the repair


def degradation_of(cfg: GanRestoreConfig, image_size: int):
    """The degradation the flags name and the input size it expects."""
    if cfg.upscale is not None:
        if image_size % cfg.upscale:
            raise UserError(f"--upscale {cfg.upscale} does not divide this run's image size {image_size}")
        return Downsample(cfg.upscale), image_size // cfg.upscale
    if cfg.denoise:
        return Noise(), image_size
    if cfg.box is not None:
        x, y, w, h = parse_box(cfg.box)
        if x + w > image_size or y + h > image_size:
            raise UserError(f"--box {cfg.box} reaches outside the {image_size}x{image_size} image")
        return Mask(box_mask(image_size, x, y, w, h)), image_size
    known = read_mask(Path(cfg.mask).expanduser(), image_size)  # (1, 1, H, W)
    if known.all():
        print(f"aigc: warning: --mask {cfg.mask} marks no pixel as missing (white = missing)", file=sys.stderr)
    return Mask(known), image_size


def view_of(degradation, shown: torch.Tensor, size: int) -> torch.Tensor:
    """What was seen, drawn at the output size: (C, size, size); missing pixels mid-grey."""
    if isinstance(degradation, Downsample):
        return F.interpolate(shown[None], size=(size, size), mode="nearest")[0]
    return shown


def side_by_side(*images: torch.Tensor, gap: int = 2) -> torch.Tensor:
    """(C, H, W) images in a row with white gaps: (C, H, n * W + (n - 1) * gap)."""
    c, h, _ = images[0].shape
    spacer = torch.ones(c, h, gap)
    parts = [part for image in images for part in (image, spacer)][:-1]
    return torch.cat(parts, dim=2)
