"""The `react demo` pipeline."""
