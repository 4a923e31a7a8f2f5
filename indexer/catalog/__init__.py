"""photodex indexer: catalog."""
