"""Training: models, data, supervised fine-tuning, RL, generation and guards."""
