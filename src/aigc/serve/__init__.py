"""`aigc serve`: an OpenAI-compatible HTTP server for GPT and GAN runs (see app.create_app)."""
