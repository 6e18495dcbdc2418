"""The ground floor: devices and per-sample randomness (util), progress lines, provenance (source hashes, import
closures), the artifact cache, several processes (distributed) and the figures' style. Imports nothing of diffgen
outside this folder."""
