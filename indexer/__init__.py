"""photodex indexer package."""
