"""Downstream evaluation through the real lm-evaluation-harness (``pip install 'slimpipe[eval]'``).

* :mod:`slimpipe.evaluation.lm`: :class:`~slimpipe.evaluation.lm.SlimpipeLM`, an ``lm_eval`` model
  registered as ``slimpipe`` (importing the module registers it).
* :mod:`slimpipe.evaluation.command`: ``slimpipe eval RUN --tasks ...`` and ``slimpipe export``.
* ``python -m slimpipe.evaluation ARGS``: lm-eval's own command line with ``--model slimpipe`` available
  (lm-eval 0.4.13 discovers no third-party models, so they must be imported before its CLI runs).
"""
