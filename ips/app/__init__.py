"""Application-layer parsers: TLS, QUIC, DNS, HTTP, SSH, and the fingerprints built from them.

The package's rule, the same as `ips.core.decode`'s: every parser is pure (bytes in, a result
out; no socket, no clock, no global state), reads fields with `struct.unpack_from` on bytes or
memoryviews, bounds its own work, and answers malformed input with a `Malformed` carrying a
stable "protocol.problem" reason code (listed in the module's `REASONS`, used as a counter
label), never with an exception. Input that is merely incomplete gets `NEED_MORE`.
"""
