"""photodex ui package."""
