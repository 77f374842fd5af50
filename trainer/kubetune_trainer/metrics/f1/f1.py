"""F1: the harmonic mean of precision and recall (scikit-learn's f1_score).

average defaults to "binary" for two classes and "macro" (unweighted mean over classes) otherwise.
"""

from sklearn.metrics import f1_score

from kubetune_trainer.metrics import sklearn_scores


class F1(sklearn_scores.ClassIdScore):
    key = "f1"
    summary = "F1: the harmonic mean of precision and recall."
    score = staticmethod(f1_score)
