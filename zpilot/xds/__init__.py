"""xDS serving: snapshot cache, ADS server, pushes, config dumps and the debug API."""
