"""The gateway member service: kernel first, then announce; health; drain; status."""
