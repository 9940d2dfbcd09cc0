"""What RQ workers run: thin functions that wire faces, store and training together."""
