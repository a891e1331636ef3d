"""Reproducible experiments built on train.py (python -m snvideo.experiments.<name>)."""
