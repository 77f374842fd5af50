"""The recall metric module (see recall.py)."""
