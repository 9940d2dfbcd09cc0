"""Faces: adapters to where posts come from and go to. They know nothing of the store, queue or training."""
