"""Ray Train loops (run on workers) and the driver-side stage runner."""
