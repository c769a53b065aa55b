"""The runs a server serves: a GPT run behind its batching engine, a GAN run behind a lock.

Model ids are the run folder's name, or the NAME of ``NAME=PATH``. A GPT chat request is
rendered with the plain template below unless the run's config.json carries its own
``"chat_template": {"message": "...{role}...{content}...", "assistant": "..."}``::

    system: You are terse.
    user: Hello!
    assistant:

(``{role}: {content}\\n`` per message, then ``assistant:``; generation stops before the model
starts another turn, at ``\\nuser:``).
"""

from __future__ import annotations

import base64
import io
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc.errors import UserError
from aigc.gan.generation import generate_images
from aigc.gan.guide import candidates_per_image, load_stages, stacked
from aigc.gan.loading import GanRun, load_gan
from aigc.gpt.loading import GptRun, load_gpt
from aigc.serve.engine import Engine

DEFAULT_CHAT_TEMPLATE = {"message": "{role}: {content}\n", "assistant": "assistant:"}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the id is then the folder's name) -> (id, path)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name:
        return name, Path(path)
    path = Path(spec)
    return path.resolve().name, path


@dataclass
class ServedGpt:
    id: str
    run: GptRun
    engine: Engine

    @property
    def context_length(self) -> int:
        return self.run.model.config.block_size

    def chat_prompt(self, messages: list[tuple[str, str]]) -> tuple[str, list[str]]:
        """The prompt text for (role, content) messages, and the stop strings that end the reply."""
        template = {**DEFAULT_CHAT_TEMPLATE, **self.run.run_config.get("chat_template", {})}
        try:
            text = "".join(template["message"].format(role=role, content=content) for role, content in messages)
            next_turn = template["message"].split("{content}")[0].format(role="user").strip()  # "user:"
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(f"{self.id}'s chat_template in config.json is broken: {exc}") from None
        return text + template["assistant"], ["\n" + next_turn] if next_turn else []


class ServedGan:
    """A GAN run: images for a class named in a prompt."""

    def __init__(self, id: str, run: GanRun):
        self.id, self.run = id, run
        self.config = run.model_config
        # The run's guide, as `aigc gan sample` uses it by default: each image resampled through its stages.
        self.temperature = run.temperature()  # the noise temperature `aigc gan sample` draws at by default
        candidates = candidates_per_image(run, None, ema=True, temperature=self.temperature)
        self.guide_stages = [] if candidates == 1 else load_stages(run, candidates, ema=True,
                                                                      temperature=self.temperature)
        self.classes: list[str] = [str(c) for c in run.run_config.get("class_names") or range(self.config.num_classes)]
        self._lock = threading.Lock()  # one generation at a time: the generator has batch-norm state

    @property
    def size(self) -> str:
        return f"{self.config.image_size}x{self.config.image_size}"

    def label_of(self, prompt: str) -> int | None:
        """The class a prompt names ("7", "seven", "a handwritten 7", a class name); None for an
        unconditional model, which draws from all of them. Naming none, or several, is a UserError."""
        if not self.config.conditional:
            return None
        words = set(re.findall(r"\w+", prompt.lower()))
        named = []
        for label, name in enumerate(self.classes):
            aliases = {name.lower()}
            if name.isdigit() and int(name) < len(NUMBER_WORDS):
                aliases.add(NUMBER_WORDS[int(name)])
            if any(alias in words or (" " in alias and alias in prompt.lower()) for alias in aliases):
                named.append(label)
        if len(named) != 1:
            which = "no class" if not named else "several classes (" + ", ".join(self.classes[i] for i in named) + ")"
            raise UserError(f"the prompt names {which}; name one of: {', '.join(self.classes)}")
        return named[0]

    def _generator(self, seed: int) -> torch.nn.Module:
        return stacked(self.run.generator, self.guide_stages, self.config, temperature=self.temperature, seed=seed)

    def png_images(self, n: int, label: int | None, seed: int) -> list[str]:
        """``n`` images as base64 PNGs."""
        from PIL import Image

        from aigc.data.images import to_uint8

        labels = None if label is None else torch.full((n,), label, dtype=torch.int64)
        with self._lock:  # the same images as `aigc gan sample --seed` draws
            images = to_uint8(generate_images(self._generator(seed), self.config, n, labels, seed,
                                              temperature=self.temperature))  # (n, H, W, C)
        encoded = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
            encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        return encoded


def load_models(gpt: list[str], gan: list[str], device: torch.device, checkpoint: str = "best",
                max_batch: int = 16, max_queue: int = 64, dtype: str = "auto",
                compile: bool = False) -> dict[str, ServedGpt | ServedGan]:
    """Load every run (a folder that is not a run of that kind is a UserError) under its id;
    ``compile``: each GPT decodes through torch.compile, compiled before serving."""
    served: dict[str, ServedGpt | ServedGan] = {}
    for kind, specs in (("gpt", gpt), ("gan", gan)):
        for spec in specs:
            name, path = parse_model_spec(spec)
            if name in served:
                raise UserError(f"two models are named {name!r}; name them: --{kind} NAME=PATH")
            if kind == "gpt":
                run = load_gpt(path, checkpoint, device, dtype=dtype, compile=compile)
                served[name] = ServedGpt(name, run, Engine(run.model, run.tokenizer, max_batch, max_queue))
            else:
                served[name] = ServedGan(name, load_gan(path, device=device))
    return served
