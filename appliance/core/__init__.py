"""The core: the typed model, snapshot and intent, errors, config field parsers and structured events. Pure; every
other layer may import it."""
