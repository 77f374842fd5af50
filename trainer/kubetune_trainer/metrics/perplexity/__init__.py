"""The perplexity metric module (see perplexity.py)."""
