"""photodex answerer package."""
