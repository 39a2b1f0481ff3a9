"""What every stage and process shares: run settings, messages, errors and defaults.

It imports nothing else of rsample but the backend registry's names (which import nothing at all), so every other
module can build on it."""
