"""Evaluation (METHOD.md section 6): pure metric functions; generation and reports live beside them."""
