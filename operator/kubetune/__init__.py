"""kubetune: Kubernetes-native fine-tuning of Hugging Face models (the torch-free part: spec, CLI, operator)."""

__version__ = "0.1.0"
