"""Layers, activations, losses, initialisers and the MLP model."""
