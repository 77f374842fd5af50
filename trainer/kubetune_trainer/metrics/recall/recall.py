"""Recall: the fraction of actual positives that are found (scikit-learn's recall_score).

average defaults to "binary" for two classes and "macro" (unweighted mean over classes) otherwise.
"""

from sklearn.metrics import recall_score

from kubetune_trainer.metrics import sklearn_scores


class Recall(sklearn_scores.ClassIdScore):
    key = "recall"
    summary = "Recall: the fraction of actual positives that are found."
    score = staticmethod(recall_score)
