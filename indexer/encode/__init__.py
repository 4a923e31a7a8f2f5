"""photodex indexer: encode."""
