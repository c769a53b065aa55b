import pytest
import torch

from aigc.errors import UserError
from aigc.gan.models import GanModelConfig, build_discriminator, build_generator


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
