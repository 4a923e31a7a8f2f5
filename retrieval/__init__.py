"""photodex retrieval package."""
