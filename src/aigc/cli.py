"""The ``aigc`` command: ``aigc <area> <verb> [--flags]``.

Each command is a typed config dataclass (its fields become flags) and a recipe function
named as ``"module:function"``, imported only when that command runs, so ``aigc --help``
stays fast. Errors a user can cause print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import re
import sys
from dataclasses import dataclass

from aigc import __version__
from aigc.compress.config import CompressConfig, GptExportOnnxConfig
from aigc.config import add_config_arguments, build_config, flag_name
from aigc.demo_config import DemoConfig
from aigc.errors import UserError
from aigc.gan.config import GanEvalConfig, GanGuideConfig, GanRestoreConfig, GanSampleConfig, GanTrainConfig
from aigc.gpt.config import (GptEvalConfig, GptExportHfConfig, GptFinetuneConfig, GptGenerateConfig, GptImportHfConfig,
                             GptMergeConfig, GptTrainConfig)
from aigc.memory import keep_freed_memory
from aigc.serve.config import ServeConfig
from aigc.textgan.config import TextGanSampleConfig, TextGanTrainConfig


@dataclass(frozen=True)
class Command:
    area: str | None  # None for top-level commands such as ``aigc demo``
    name: str
    help: str
    config: type
    recipe: str  # "module:function", called with the config


AREAS = {
    "gan": "image GANs: train, sample, eval, guide, restore",
    "gpt": "GPT language models: train, generate, eval, finetune, merge, export-hf, import-hf, export-onnx",
    "textgan": "adversarial training of a GPT text generator (SeqGAN) and guided sampling: train, sample",
}

COMMANDS = [
    Command(None, "demo", "a minute each of GAN and GPT training on bundled data: a digit grid and generated text",
            DemoConfig, "aigc.demo:run_demo"),
    Command("gan", "train", "train a GAN (mlp or dcgan, optionally class-conditional)",
            GanTrainConfig, "aigc.gan.train:train"),
    Command("gan", "sample", "draw samples from a trained GAN run into a PNG grid or an npz",
            GanSampleConfig, "aigc.gan.sample:sample"),
    Command("gan", "eval", "judge a GAN run's samples: FID, C2ST, precision/recall, mode coverage vs real data",
            GanEvalConfig, "aigc.gan.evaluate:evaluate_run"),
    Command("gan", "guide", "fit a guide for --guided sampling: a classifier of the run's training images against "
                            "its samples, whose logit corrects the generator's density", GanGuideConfig,
            "aigc.gan.guide_command:guide_command"),
    Command("gan", "restore", "repair damaged images with a GAN run: inpaint (--mask, --box), super-resolve "
                              "(--upscale) or --denoise, by GAN inversion",
            GanRestoreConfig, "aigc.gan.restore_command:restore_command"),
    Command("gpt", "train", "pretrain (or fine-tune with --init-from) a GPT on text",
            GptTrainConfig, "aigc.gpt.train:train"),
    Command("gpt", "generate", "continue a prompt with a trained GPT",
            GptGenerateConfig, "aigc.gpt.generation:generate_command"),
    Command("gpt", "eval", "loss, perplexity and bits per byte of a GPT run on text; BLEU, ROUGE, accuracy of a fine-tuned run",
            GptEvalConfig, "aigc.gpt.evaluate:evaluate_command"),
    Command("gpt", "finetune", "fine-tune a GPT run for a task (completion or classify): full, lora, adalora or adapter",
            GptFinetuneConfig, "aigc.gpt.finetune:finetune"),
    Command("gpt", "merge", "fold a LoRA/AdaLoRA fine-tuned run into a plain GPT run",
            GptMergeConfig, "aigc.gpt.merge:merge"),
    Command("gpt", "export-hf", "write a GPT run as a Hugging Face GPT-2 model folder",
            GptExportHfConfig, "aigc.gpt.hf:export_hf"),
    Command("gpt", "import-hf", "make a GPT run from a Hugging Face GPT-2 model folder",
            GptImportHfConfig, "aigc.gpt.hf:import_hf"),
    Command("gpt", "export-onnx", "write a GPT run as an ONNX graph with its KV cache, checked in ONNX Runtime",
            GptExportOnnxConfig, "aigc.compress.command:export_onnx"),
    Command(None, "compress", "a smaller, faster copy of a GPT or GAN run: int8 or bf16 weights, pruned heads and "
                              "MLP channels", CompressConfig, "aigc.compress.command:compress"),
    Command(None, "serve", "serve GPT and GAN runs over HTTP: OpenAI's API with continuous batching, a playground page, "
                           "metrics", ServeConfig, "aigc.serve.cli:serve"),
    Command("textgan", "train", "train a GPT generator by MLE, then adversarially against a discriminator (SeqGAN)",
            TextGanTrainConfig, "aigc.textgan.train:train"),
    Command("textgan", "sample", "sequences of a text-GAN run, optionally guided by its discriminator (importance "
                                 "resampling, rejection)", TextGanSampleConfig, "aigc.textgan.sample:sample"),
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus where to find help) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aigc", description="Generative AI on PyTorch: GANs and GPTs.")
    parser.add_argument("--version", action="version", version=f"aigc {__version__}")
    top = parser.add_subparsers(dest="area", metavar="COMMAND", required=True)
    area_parsers: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS:
        if command.area is None:
            sub = top.add_parser(command.name, help=command.help, description=command.help)
        else:
            if command.area not in area_parsers:
                area = top.add_parser(command.area, help=AREAS[command.area], description=AREAS[command.area])
                area_parsers[command.area] = area.add_subparsers(dest="verb", metavar="VERB", required=True)
            sub = area_parsers[command.area].add_parser(command.name, help=command.help, description=command.help)
        add_config_arguments(sub, command.config)
        sub.set_defaults(_command=command)
    return parser


def run_command(command: Command, given: dict) -> object:
    config = build_config(command.config, given)
    module_name, function_name = command.recipe.split(":")
    return getattr(importlib.import_module(module_name), function_name)(config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k not in ("area", "verb", "_command")}
    keep_freed_memory()  # large CPU tensors reuse freed pages instead of faulting in fresh ones (aigc.memory)
    try:
        run_command(args._command, given)
    except UserError as exc:
        return _error(str(exc), exc.exit_status)
    except KeyboardInterrupt as exc:  # a trainer says where its resumable checkpoint is
        print(f"aigc: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        return _error(_out_of_memory_message(exc, given), 2)
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        return _error(f"cannot write{where}: {exc.strerror}", 2)
    return 0


# What the machine refuses when a command writes: no permission, a read-only filesystem, a full disk.
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _error(message: str, status: int) -> int:
    """Print the promised single line (a message of several lines is joined into one)."""
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"aigc: error: {one_line}", file=sys.stderr)
    return status


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation failure: Python's MemoryError, torch's OutOfMemoryError (CUDA, MPS) or the
    CPU allocator's RuntimeError. torch is only looked at if a command already imported it."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc)
    return any(s in text for s in ("DefaultCPUAllocator", "not enough memory", "can't allocate memory",
                                   "out of memory"))


def _out_of_memory_message(exc: BaseException, given: dict) -> str:
    """Name the allocation and the sizes the user gave, the likely cause."""
    asked = re.search(r"allocate (\d+) bytes", str(exc))
    what = f" (tried to allocate {int(asked.group(1)) / 2**30:,.1f} GiB)" if asked else ""
    sizes = [f"{flag_name(name)} {value}" for name, value in given.items()
             if isinstance(value, int) and not isinstance(value, bool) and value > 1 and name != "seed"]
    hint = f"; the sizes given: {', '.join(sizes)}: try smaller ones" if sizes else "; try smaller sizes"
    return f"out of memory{what}{hint}"


if __name__ == "__main__":
    sys.exit(main())
