"""Precision: the fraction of predicted positives that are correct (scikit-learn's precision_score).

average defaults to "binary" for two classes and "macro" (unweighted mean over classes) otherwise.
"""

from sklearn.metrics import precision_score

from kubetune_trainer.metrics import sklearn_scores


class Precision(sklearn_scores.ClassIdScore):
    key = "precision"
    summary = "Precision: the fraction of predicted positives that are correct."
    score = staticmethod(precision_score)
