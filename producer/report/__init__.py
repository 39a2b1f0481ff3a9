"""`rsample report`: what a run's pairs and scores look like, before anyone trains on them."""
