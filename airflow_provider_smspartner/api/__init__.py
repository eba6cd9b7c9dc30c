"""The hook's transport: the response contract, the throttles, the shared rate limit, the retry log.

Only :mod:`airflow_provider_smspartner.hooks` imports this package (``tests/test_layout.py``): every
other part goes through the hook. What several parts share stays in ``utils``.
"""
