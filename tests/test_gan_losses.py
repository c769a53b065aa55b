import math

import pytest
import torch

from aigc.gan.losses import LOSSES, gradient_penalty

REAL = torch.tensor([2.0, -1.0])
FAKE = torch.tensor([-3.0, 0.5])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bce_values_match_the_minimax_formula():
    loss = LOSSES["bce"]
    sigmoid = torch.sigmoid
    expected_d = -(torch.log(sigmoid(REAL)).mean() + torch.log(1 - sigmoid(FAKE)).mean())
    assert loss.discriminator(REAL, FAKE).item() == pytest.approx(expected_d.item(), rel=1e-6)
    # Non-saturating generator loss: -log D(G(z)).
    expected_g = -torch.log(sigmoid(FAKE)).mean()
    assert loss.generator(FAKE).item() == pytest.approx(expected_g.item(), rel=1e-6)


def test_bce_is_finite_for_extreme_logits():
    loss = LOSSES["bce"]
    huge = torch.tensor([1e4, -1e4])
    assert torch.isfinite(loss.discriminator(huge, huge))
    assert torch.isfinite(loss.generator(huge))


def test_bce_signs_reward_the_right_side():
    loss = LOSSES["bce"]
    confident = loss.discriminator(torch.tensor([5.0]), torch.tensor([-5.0]))
    fooled = loss.discriminator(torch.tensor([-5.0]), torch.tensor([5.0]))
    assert confident < fooled
    assert loss.generator(torch.tensor([5.0])) < loss.generator(torch.tensor([-5.0]))


def test_hinge_values():
    loss = LOSSES["hinge"]
    # relu(1 - [2, -1]) = [0, 2]; relu(1 + [-3, 0.5]) = [0, 1.5]
    assert loss.discriminator(REAL, FAKE).item() == pytest.approx(1.0 + 0.75)
    assert loss.generator(FAKE).item() == pytest.approx(1.25)


def test_wasserstein_values():
    loss = LOSSES["wgan-gp"]
    assert loss.discriminator(REAL, FAKE).item() == pytest.approx(-1.25 - 0.5)
    assert loss.generator(FAKE).item() == pytest.approx(1.25)
    assert loss.gradient_penalty and loss.default_n_critic == 5


@pytest.mark.parametrize("norm, expected", [(1.0, 0.0), (3.0, 4.0), (0.5, 0.25)])
def test_gradient_penalty_of_a_linear_critic(norm, expected):
    # D(x) = <w, x> has gradient w everywhere, so the penalty is (||w|| - 1)^2 exactly.
    w = torch.randn(1, 3, 4, 4)
    w = w / w.norm() * norm

    def critic(x, labels=None):
        return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(expected, abs=1e-5)


def test_gradient_penalty_backpropagates_into_the_critic():
    layer = torch.nn.Linear(12, 1)
    penalty = gradient_penalty(lambda x, labels=None: layer(x.flatten(1)).squeeze(1),
                               torch.randn(4, 1, 3, 4), torch.randn(4, 1, 3, 4))
    penalty.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
