import pytest
import torch
from torch import nn

from aigc.errors import UserError
from aigc.gan.models import (GanModelConfig, NoiseProjection, build_discriminator, build_generator,
                             judges_samples_independently)


@pytest.mark.parametrize("model", ["mlp", "dcgan"])
@pytest.mark.parametrize("num_classes", [0, 10])
@pytest.mark.parametrize("image_size, channels", [(28, 1), (32, 3), (64, 1)])
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_shapes(model, num_classes, image_size, channels, spectral_norm):
    cfg = GanModelConfig(model=model, num_classes=num_classes, image_size=image_size, channels=channels,
                         width=16, spectral_norm=spectral_norm, disc_norm="none" if spectral_norm else "batch")
    generator, discriminator = build_generator(cfg), build_discriminator(cfg)
    labels = torch.randint(0, 10, (3,)) if num_classes else None
    images = generator(torch.randn(3, cfg.z_dim), labels)
    assert images.shape == (3, channels, image_size, image_size)
    assert images.min() >= -1 and images.max() <= 1
    assert discriminator(images, labels).shape == (3,)


def test_conditional_generator_depends_on_the_label():
    cfg = GanModelConfig(model="dcgan", num_classes=10, width=8)
    generator = build_generator(cfg).eval()
    z = torch.randn(1, cfg.z_dim).expand(2, -1)
    images = generator(z, torch.tensor([3, 7]))
    assert not torch.allclose(images[0], images[1])


def test_projection_discriminator_depends_on_the_label():
    cfg = GanModelConfig(model="dcgan", num_classes=10, width=8)
    discriminator = build_discriminator(cfg).eval()
    x = torch.randn(1, 1, 28, 28).expand(2, -1, -1, -1)
    logits = discriminator(x, torch.tensor([3, 7]))
    assert logits[0] != logits[1]


def test_dcgan_rejects_unsupported_sizes():
    with pytest.raises(UserError, match="image size .*28, 32.* got 30"):
        build_generator(GanModelConfig(model="dcgan", image_size=30))


def test_dcgan_init_follows_radford():
    generator = build_generator(GanModelConfig(model="dcgan", width=64))
    conv = generator.net[0]
    assert abs(conv.weight.std().item() - 0.02) < 0.002


def test_noise_projection_is_the_transposed_convolution_it_replaces():
    projection = NoiseProjection(12, 8, 7, 1, 0, bias=False)
    z = torch.randn(5, 12)
    expected = nn.functional.conv_transpose2d(z[:, :, None, None], projection.weight)  # (5, 8, 7, 7)
    torch.testing.assert_close(projection(z), expected)
    assert list(dict(projection.named_parameters())) == ["weight"]  # saved runs' keys and shapes


@pytest.mark.parametrize("cfg, independent", [
    (GanModelConfig(model="mlp"), True),
    (GanModelConfig(model="dcgan", disc_norm="none", num_classes=10), True),
    (GanModelConfig(model="dcgan", disc_norm="none", pack=2), True),
    (GanModelConfig(model="dcgan"), False),  # batch norm
    (GanModelConfig(model="mlp", minibatch_std=True), False),
])
def test_one_pass_over_real_and_fake_gives_each_pass_logits_where_samples_are_judged_alone(cfg, independent):
    discriminator = build_discriminator(cfg)
    assert judges_samples_independently(discriminator) == independent
    real, fake = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    labels = torch.tensor([1, 2, 3, 4]) if cfg.num_classes else None
    both = discriminator(torch.cat([real, fake]), None if labels is None else torch.cat([labels, labels]))
    separate = torch.cat([discriminator(real, labels), discriminator(fake, labels)])
    assert torch.allclose(both, separate, atol=1e-5) == independent
