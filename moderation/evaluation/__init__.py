"""The evaluation framework: versioned evaluation datasets, offline metrics with fairness
slices, the promotion gate, threshold calibration, the offline report and the review loop.

Every model or threshold change is measured here before it touches the catalog:

* ``datasets``  evaluation sets as Delta tables under ``<lake>/eval/datasets/<name>``
* ``metrics``   per-category and per-slice metrics (scikit-learn) with bootstrap intervals
* ``evaluate``  scores a dataset with a registry model; ``<lake>/eval/predictions`` and ``results``
* ``gate``      compares a candidate (policy version, model digests) with the live one
* ``calibrate`` proposes per-category thresholds as a new draft policy version file
* ``report``    a static HTML report with matplotlib figures
* ``review``    human review outcomes (``<lake>/labels``) and the review queue
"""
