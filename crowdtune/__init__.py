"""Crowdtune: train a language model on a channel's posts and keep it training on reactions."""
