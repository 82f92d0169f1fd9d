"""Light heads on frozen embeddings, with the scikit-learn estimator contract; one family per module.

- ``logreg`` (:mod:`.logreg`): multinomial logistic regression, class-weighted for rare classes;
- ``mlp`` (:mod:`.mlp`): a one-hidden-layer MLP in torch with a focal, seesaw or class-weighted
  cross-entropy loss, optionally logit-adjusted; the same module is the head that noise-tolerant
  training trains;
- ``knn`` (:mod:`.knn`): cosine k-nearest neighbours with similarity-weighted votes;
- ``ensemble`` (:mod:`.ensemble`): a weighted mean of the members' probabilities (default:
  logreg + mlp + knn), the weights picked on inner out-of-fold predictions.

:mod:`.across_backbones` combines heads on several backbones' embeddings (``predict --backbones``);
it is built from the backbones' widths, not registered by name.

Importing the package registers them all; :func:`make_head` builds one by name.
"""

from fieldguide.models.heads import ensemble, knn, logreg, mlp  # noqa: F401 - each registers its head
from fieldguide.models.heads.base import available_heads, make_head, register_head

__all__ = ["available_heads", "make_head", "register_head"]
