"""The pieces every trainer shares: the loop driver (``loop``), learning-rate schedules
(``schedule``), seeded resumable samplers (``samplers``) and the accumulated optimizer step
(``steps``). Recipes (``gan/train.py``, ``gpt/train.py``, ``gpt/finetune.py``,
``textgan/train.py``) build their parts and keep only their own step and evaluation."""
