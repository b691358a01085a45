"""Application-layer metadata: protocol detection, TCP stream reassembly, and the parsers of
TLS, QUIC, DNS, HTTP and SSH with the fingerprints built from them (JA3, JA3S, JA4,
community_id).

The package's rule, the same as `ips.core.decode`'s: everything here is pure (bytes and, where
time matters, a `now` argument in; values out; no socket, no clock, no global state), reads
fields with `struct.unpack_from` on bytes or memoryview slices, bounds its own work, and
answers malformed input with a `Malformed` carrying a stable "protocol.problem" reason code
(listed in the module's `REASONS`, used as a counter label), never with an exception. Input
that is merely incomplete gets `NEED_MORE` (or None where the module says so).
"""
