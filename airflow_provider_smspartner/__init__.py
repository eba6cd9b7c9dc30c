"""Apache Airflow provider for the SMS Partner stop list.

Kept import-light on purpose: Airflow imports provider packages while parsing DAGs.
"""

__version__ = "0.1.0"
