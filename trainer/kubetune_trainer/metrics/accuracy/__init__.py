"""The accuracy metric module (see accuracy.py)."""
