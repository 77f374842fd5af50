"""Precision: the fraction of predicted positives that are correct (scikit-learn's precision_score).

average defaults to "binary" for two classes and "macro" (unweighted mean over classes) otherwise.
"""

import datasets
import evaluate
from sklearn.metrics import precision_score


class Precision(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Precision: the fraction of predicted positives that are correct.",
            citation="",
            inputs_description="predictions and references: class ids (int); average: binary, macro, micro or weighted.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, average=None, labels=None):
        if average is None:
            average = "binary" if len(set(references) | set(predictions)) <= 2 else "macro"
        score = precision_score(references, predictions, average=average, labels=labels, zero_division=0)
        return {"precision": float(score)}
