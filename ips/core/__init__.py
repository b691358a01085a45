"""The pure core: packet views, decoding, flow tracking. No I/O, no clock."""
