"""Embedders: the only place that touches the model."""
