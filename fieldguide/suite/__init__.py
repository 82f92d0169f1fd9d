"""The benchmark suite: every learned default of the project against its plain baseline, per collection.

``fieldguide bench suite`` ingests each collection into a project of its own (under
``benchmarks/.cache/<name>``; ingest adds nothing twice and embed embeds only new images, so a
re-run does not re-embed), reads its cached embeddings and labels as arrays, and runs four
families of comparisons on the same features in the same run, each default computed by the
project's own code with the defaults of :mod:`fieldguide.config` and each baseline by plain
scikit-learn, cleanlab or torch:

- ``heads``: the ``[predict] head`` fit on train vs ``LogisticRegression(C=10)`` on L2-normalised
  features; test top-1 and macro-F1.
- ``noise``: the noise score (AUROC) and its ``label_issue`` decision (F1), computed as ``flag``
  does (out-of-fold pred_probs of the predict head, the weighted signals, a two-stage entropy run's
  trajectories) vs cleanlab alone on 5-fold plain LR pred_probs (``get_label_quality_scores``
  AUROC, ``find_label_issues`` F1), at symmetric and confusable-pair noise injected into the train
  labels with a fixed seed.
- ``train``: ``train --mode head`` (the default method, and ``ce``) on noisy train labels vs a
  full-batch weight-decayed linear CE head (Adam 1e-2, weight decay 1e-4, 200 steps); clean test
  top-1 and macro-F1.
- ``pseudolabel``: k labels per class kept, the rest of train unlabeled: ``pseudolabel`` with its
  defaults, every pseudo-label accepted, then ``train`` vs supervised only (``train`` on the k
  labels, and plain LR on them); and ``train`` on the k labels vs plain LR.

Every row is ``collection, setting, method, role (default | baseline), metric, value``; one CSV
per family (``suite_<family>.csv``). :func:`side_by_side` puts each default beside each baseline
of its setting and marks where the default loses.

A collection whose store has no test split gets the suite's split: per class, its samples (or
observations, when photos share one) in file path order, shuffled by one ``random.Random(7)``
taken class after class in class order, 30% of each class to test (the split of the reference
numbers in ``shared/data/README.md``).

The package: :mod:`~fieldguide.suite.plan` (constants, :class:`Plan`),
:mod:`~fieldguide.suite.collections` (collections to features), :mod:`~fieldguide.suite.baselines`
(metrics, plain baselines), :mod:`~fieldguide.suite.compare` (the four families),
:mod:`~fieldguide.suite.report` (the run, its CSVs, the side-by-side table).
"""

from fieldguide.suite.baselines import *  # noqa: F401,F403
from fieldguide.suite.collections import *  # noqa: F401,F403
from fieldguide.suite.compare import *  # noqa: F401,F403
from fieldguide.suite.plan import *  # noqa: F401,F403
from fieldguide.suite.report import *  # noqa: F401,F403
