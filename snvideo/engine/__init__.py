"""Training and evaluation helpers that sit beside the loops in train.py / test.py."""
