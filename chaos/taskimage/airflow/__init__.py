"""The chaos suite's container image: a stand-in for Airflow, see ``sdk/execution_time/execute_workload.py``."""
