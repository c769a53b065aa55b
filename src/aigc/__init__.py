"""aigc: generative AI on PyTorch (GANs and GPTs), from a laptop CPU up."""

__version__ = "0.1.0"
