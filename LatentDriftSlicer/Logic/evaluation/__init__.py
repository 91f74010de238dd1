"""Measuring and reporting: offline metrics, PNG previews and model cards written from measured figures."""
