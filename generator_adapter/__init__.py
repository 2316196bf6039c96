"""Video generator interface and backends (see the generator issue); nothing here is wired in yet."""
