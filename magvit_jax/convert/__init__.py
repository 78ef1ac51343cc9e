"""Converters from the official implementations' parameters to this project's models."""
