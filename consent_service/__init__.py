"""Cameo consent service: likeness grants, consent checks, receipts and audit."""
