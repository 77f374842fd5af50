"""Harness for tests against a real local Kubernetes control plane (see harness.py)."""
