"""The warehouse layer: every table the provider owns, and how it reads and writes them.

Generic code on SQLAlchemy Core (:mod:`.writer`, :mod:`.apply`, :mod:`.ddl`, :mod:`.stream`)
beside what one database does its own way (:mod:`.postgres`: COPY, truncate-and-rebuild;
:mod:`.locks`: a per-table lock on each database), over plain data (:mod:`.tables`: every
provider-owned table shape; :mod:`.names`: the one table-name parser). Import-light: SQLAlchemy
and pandas load with the modules that use them, not here.
"""
