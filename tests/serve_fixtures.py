"""Tiny trained runs for the server tests, made once per test session (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigc.serve.background import BackgroundServer

# Characters the tiny GPT knows: its corpus. Prompts of the tests stay inside it.
CORPUS = "to be or not to be, that is the question. user: assistant: system:\n" * 120


@pytest.fixture(scope="session")
def gpt_run(tmp_path_factory) -> Path:
    from aigc.gpt.config import GptTrainConfig
    from aigc.gpt.train import train

    root = tmp_path_factory.mktemp("serve-gpt")
    data = root / "corpus.txt"
    data.write_text(CORPUS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIGC_CACHE_DIR", str(root / "cache"))
        return train(GptTrainConfig(data=str(data), out=str(root / "shakespeare"), n_layer=1, n_head=2, n_embd=32,
                                    block_size=32, batch_size=16, lr=1e-2, warmup_iters=5, max_iters=60,
                                    eval_interval=60, eval_iters=1, amp=False, device="cpu"))


@pytest.fixture(scope="session")
def gan_run(tmp_path_factory) -> Path:
    from aigc.gan.config import GanTrainConfig
    from aigc.gan.train import train

    out = tmp_path_factory.mktemp("serve-gan") / "digits"
    return train(GanTrainConfig(model="mlp", conditional=True, width=16, steps=4, batch_size=16, out=str(out),
                                device="cpu", amp=False, log_every=4, sample_every=4, save_every=4))


@pytest.fixture(scope="session")
def unconditional_gan_run(tmp_path_factory) -> Path:
    from aigc.gan.config import GanTrainConfig
    from aigc.gan.train import train

    out = tmp_path_factory.mktemp("serve-gan") / "any-digit"
    return train(GanTrainConfig(model="mlp", width=16, steps=2, batch_size=16, out=str(out),
                                device="cpu", amp=False, log_every=2, sample_every=2, save_every=2))


class LiveServer(BackgroundServer):
    """An app under uvicorn on a free loopback port, in a thread of this process."""

    def engine(self, model: str):
        return self.app.state.models[model].engine
