"""Pieces of `report.py`: markdown tables, the decoding comparison, and the report's text."""
