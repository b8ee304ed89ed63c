"""The paper's studies (Table 1a-e, Figure 4, the prior), run from a checkout: ``python -m experiments.paper_study``.

Research code beside the package, not in it: it imports only keras_retina's
public API (``keras_retina`` and its subpackages), and keras_retina never
imports it. ``docs/paper_study.md`` has the results.
"""
