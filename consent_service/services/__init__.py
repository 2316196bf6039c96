"""Service layer: rules and transactions. Routes call exactly one function here."""
