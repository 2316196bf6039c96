"""Casbin models and typed enforcers: route-level RBAC and likeness consent decisions."""
