"""Training tools for the embedded cell model: synthetic data, prompts, losses and the trainer."""
