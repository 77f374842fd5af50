"""The shared body of the precision, recall and F1 metric scripts: a scikit-learn score of class ids.

Each script subclasses `ClassIdScore` through this module's name (`sklearn_scores.ClassIdScore`), so that its own
class is the only `evaluate.Metric` in its namespace: `evaluate` loads the first one it finds.
"""

from collections.abc import Callable
from typing import Any, ClassVar

import datasets
import evaluate


class ClassIdScore(evaluate.Metric):
    """A scikit-learn score of predicted against reference class ids. Subclasses set the three class variables.

    average defaults to "binary" for two classes and "macro" (unweighted mean over classes) otherwise.
    """

    key: ClassVar[str]
    summary: ClassVar[str]
    score: ClassVar[Callable[..., Any]]

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.summary,
            citation="",
            inputs_description="predictions and references: class ids (int); average: binary, macro, micro or weighted.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, average=None, labels=None):
        if average is None:
            average = "binary" if len(set(references) | set(predictions)) <= 2 else "macro"
        value = type(self).score(references, predictions, average=average, labels=labels, zero_division=0)
        return {self.key: float(value)}
