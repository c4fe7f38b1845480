"""Attention heatmaps, GeoJSON export and evaluation plots."""
