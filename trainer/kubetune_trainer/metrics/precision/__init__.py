"""The precision metric module (see precision.py)."""
