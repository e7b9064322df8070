"""Registry: MLflow tracking helpers, the pyfunc model, and the promotion gate."""
