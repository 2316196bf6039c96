"""Tamper-evident audit log (see the audit issue). The consent core writes its rows today."""
