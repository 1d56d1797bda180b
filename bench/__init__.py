"""Side-by-side benchmarks: ``aws_reconciler.executor.EcsExecutor`` vs the amazon provider's
``AwsEcsExecutor``, both against the embedded sandbox. Run with ``python -m bench.run``."""
