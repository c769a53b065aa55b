"""Adversarial training of a GPT text generator (SeqGAN with a Transformer policy).

Components: ``oracle`` (the SeqGAN synthetic-data LSTM), ``data`` (token-id and word
sequences), ``generator`` (sampling, likelihoods), ``discriminators`` (CNN, Transformer),
``rollout`` (Monte-Carlo rewards, policy gradient). Recipe: ``train``.
"""
