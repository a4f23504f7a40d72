"""The core: hook points, callbacks, run state, the backend seam, and the two drivers."""
