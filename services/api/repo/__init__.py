"""Repository functions, one module per table group; each takes a Session."""
