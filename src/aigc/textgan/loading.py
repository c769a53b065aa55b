"""Loading a text-GAN run (its generator and vocabulary), and the generator a run starts from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc import runs
from aigc.errors import UserError
from aigc.loading import run_kind
from aigc.gpt.loading import GPT_KIND, load_gpt, load_into, model_config_of
from aigc.gpt.model import GPT
from aigc.textgan.data import Codec
from aigc.textgan.discriminators import build_discriminator

TEXTGAN_KIND = "textgan"
DISC_FILE = "discriminator.safetensors"


@dataclass
class TextGanRun:
    """A text-GAN run's generator (eval mode) and the vocabulary its sequences are written in."""

    model: GPT
    codec: Codec
    run_config: dict
    path: Path


def load_textgan(run: str | Path, device: torch.device | str = "cpu") -> TextGanRun:
    """The generator of a textgan run's last checkpoint, and its vocabulary."""
    run = Path(run)
    run_config = runs.read_run_config(run, TEXTGAN_KIND)
    model = GPT(model_config_of(run_config, run))
    load_into(model, runs.checkpoint_dir(run, "last") / runs.WEIGHTS_FILE)
    return TextGanRun(model.to(device).eval(), Codec.load(run), run_config, run)


def load_discriminator(loaded: TextGanRun, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The discriminator of a text-GAN run's last checkpoint (eval mode), e.g. the energy of a
    ``--mode residual`` run for guided sampling."""
    path = runs.checkpoint_dir(loaded.path, "last") / DISC_FILE
    if not path.is_file():
        raise UserError(f"{loaded.path} has no discriminator (it was trained with --reward constant); guided "
                        "sampling needs a run trained with one, e.g. --mode residual")
    kind = loaded.run_config.get("train", {}).get("disc", "cnn")
    disc = build_discriminator(kind, loaded.codec.model_vocab, loaded.model.config.block_size,
                               generator=loaded.model, bos=loaded.codec.bos)
    try:
        disc.load_state_dict(runs.load_weights(path)[0])
    except RuntimeError as exc:
        raise UserError(f"the discriminator in {path} does not match its run's config ({kind}): "
                        f"{str(exc).splitlines()[0]}") from None
    return disc.to(device).eval()


def load_base(run: str | Path) -> tuple[GPT, Codec]:
    """The generator to start from: a textgan run's, or a pretrained GPT run's grown by one
    embedding row for the start token (a copy of the newline token's: lines start after one)."""
    run = Path(run)
    if run_kind(run) != GPT_KIND:
        loaded = load_textgan(run)
        return loaded.model, loaded.codec
    pretrained = load_gpt(run, "best")
    gpt = pretrained.model
    codec = Codec("tokenizer", gpt.config.vocab_size, tokenizer=pretrained.tokenizer)
    if codec.eos is None:
        raise UserError(f"the tokenizer of {run} has no single newline token to end lines with")
    model = GPT(dataclasses.replace(gpt.config, vocab_size=codec.model_vocab))
    weights = gpt.weights()
    wte = weights["transformer.wte.weight"]  # (V, C)
    weights["transformer.wte.weight"] = torch.cat([wte, wte[codec.eos:codec.eos + 1]])  # (V + 1, C)
    model.load_weights(weights)
    return model, codec

