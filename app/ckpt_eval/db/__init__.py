"""Database access: connection, SQL, repository."""
