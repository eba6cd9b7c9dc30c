"""Airflow plugins shipped with the provider (loaded by the API server, never by tasks)."""
