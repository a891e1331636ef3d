"""snvideo: video action recognition with Switchable Normalization."""
__version__ = "0.1.0"
