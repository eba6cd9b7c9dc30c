"""Tests that start a whole Airflow deployment (marker ``deployment``)."""
