"""Runtime: how the networks run on this machine (device and dtype, tiling for large images,
memory, thread-count-independent encoding, stage timing and progress) and how the machine is
described in records (provenance)."""
