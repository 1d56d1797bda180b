"""The chaos suite: the guarantees of the reconciler, proven against an unkind fake AWS.

Many cheap tasks go through the real executors into a PostgreSQL store; real ``aws-reconciler
run`` processes are SIGKILLed and restarted, two replicas lose their leader again and again, the
scheduler-side executors die and new ones adopt, and the sandbox runs with its realistic profile
(eventual consistency, throttling, faults, latency, capacity). The guarantees are then checked
from the fake AWS's side (``invariants.py``). ``python -m chaos.run`` runs it; docs/reliability.md
has the figures of the long run.
"""
