"""The local stack (sandbox, database, reconciler, Airflow) for ``make demo`` and the end-to-end tests.

``python -m aws_reconciler_sandbox.demo`` runs the demo; :mod:`.stack` is the reusable orchestrator.
"""
