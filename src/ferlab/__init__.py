"""ferlab."""
