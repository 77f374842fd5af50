"""Perplexity from summed token losses: exp(total negative log-likelihood / total predicted tokens).

Unlike the hub's `perplexity` (which loads a model itself), this takes what the training loop already has:
per example, the summed NLL of its predicted tokens (predictions) and how many tokens were predicted
(references).
"""

import math

import datasets
import evaluate


class Perplexity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Perplexity of a causal language model on held-out text.",
            citation="",
            inputs_description="predictions: summed NLL per example (float); references: predicted tokens (int).",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        tokens = sum(references)
        if tokens == 0:
            return {"perplexity": float("nan")}
        return {"perplexity": float(math.exp(min(sum(predictions) / tokens, 700.0)))}
