"""Service layer: ``retain serve``, a model store behind an HTTP API that keeps learning by itself."""
