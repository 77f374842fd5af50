"""The f1 metric module (see f1.py)."""
