"""photodex indexer: sync."""
