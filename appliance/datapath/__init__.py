"""The data path: pure planners (plan/) and the kernel appliers that converge to them (apply/)."""
