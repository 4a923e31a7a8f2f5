"""photodex indexer: core."""
