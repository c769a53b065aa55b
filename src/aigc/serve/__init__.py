"""`aigc serve`: an OpenAI-compatible HTTP server for GPT and GAN runs.

``aigc.serve.create_app(gpt=[...], gan=[...])`` returns the ASGI app (see :func:`aigc.serve.app.create_app`);
FastAPI is imported only when it is asked for, so importing this package stays light.
"""


def __getattr__(name: str):
    if name == "create_app":
        from aigc.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'aigc.serve' has no attribute {name!r}")
