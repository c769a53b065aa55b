"""The names the CLI offers (torch-free lists in the config modules, so ``aigc --help`` stays
fast) are exactly the names the implementing registries know, and each name really builds.

FINETUNE_METHODS is checked against ``apply_method`` in test_finetune.py.
"""

from __future__ import annotations

import pytest
import torch

from aigc.compress import config as compress_config
from aigc.compress import prune, quantize
from aigc.data import tokenizers
from aigc.gan import config as gan_config
from aigc.gan import losses as gan_losses
from aigc.gan import models as gan_models
from aigc.gpt import config as gpt_config
from aigc.gpt import task_eval
from aigc.gpt.model import GPT, GPTConfig
from aigc.textgan import config as textgan_config
from aigc.textgan import discriminators


@pytest.mark.parametrize("offered, registry", [
    pytest.param(gan_config.MODELS, gan_models.ARCHITECTURES, id="gan --model"),
    pytest.param(gan_config.LOSS_NAMES, gan_losses.LOSSES, id="gan --loss"),
    pytest.param(textgan_config.DISCRIMINATORS, discriminators.DISCRIMINATORS, id="textgan --disc"),
    pytest.param(gpt_config.TOKENIZERS, tokenizers.TRAINERS, id="gpt --tokenizer"),
    pytest.param(gpt_config.TASK_METRICS, task_eval.TASK_METRICS, id="gpt eval task --metrics"),
    pytest.param(compress_config.SCHEMES, quantize.SCHEMES, id="compress --quantize"),
    pytest.param(compress_config.IMPORTANCE, prune.IMPORTANCE, id="compress --importance"),
])
def test_the_offered_names_are_the_registry_names(offered, registry):
    assert len(set(offered)) == len(offered)
    assert set(offered) == set(registry)


@pytest.mark.parametrize("model", gan_config.MODELS)
def test_every_gan_model_builds_a_generator_and_a_discriminator(model):
    cfg = gan_models.GanModelConfig(model=model, z_dim=8, width=8)
    images = gan_models.build_generator(cfg)(torch.randn(2, 8))  # (2, 1, 28, 28)
    assert images.shape == (2, 1, 28, 28)
    assert gan_models.build_discriminator(cfg)(images).shape == (2,)  # one logit an image


@pytest.mark.parametrize("kind", textgan_config.DISCRIMINATORS)
def test_every_text_discriminator_gives_one_logit_a_sequence(kind):
    generator = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))  # what likelihood reads
    disc = discriminators.build_discriminator(kind, vocab_size=11, length=8, generator=generator, bos=10)
    assert disc(torch.randint(0, 10, (3, 8))).shape == (3,)


@pytest.mark.parametrize("kind", gpt_config.TOKENIZERS)
def test_every_tokenizer_kind_trains_that_kind(kind):
    data = "the cat sat on the mat; the dog sat on the log.\n".encode() * 20
    tokenizer = tokenizers.train_tokenizer(kind, data, vocab_size=270)
    assert tokenizer.kind == kind
    assert tokenizer.decode(tokenizer.encode("the cat")) == "the cat"
