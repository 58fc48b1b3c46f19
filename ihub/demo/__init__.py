"""The demo: an OAuth 2.0 REST source over a mutable table, in many API styles, and its targets."""
