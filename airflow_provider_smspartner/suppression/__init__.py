"""The engine behind the gate (``SmsPartnerSuppressAudienceOperator``), read-only against the list.

``gate`` runs one check (targets, guard, audience, report); ``engine`` matches the audience against
the list; ``sinks`` write the kept and excluded rows; ``guard`` refuses a list the gate cannot trust;
``targets`` keeps every place read or written distinct; ``audit`` is the audit table.
"""
