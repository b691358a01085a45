"""Application-layer metadata: protocol detection, TCP stream reassembly and parsers.

The package's rule, as for `ips.core.decode`: everything here is pure (bytes and, where time
matters, a `now` argument in; values out), reads fields with `struct.unpack_from` or
`memoryview` slices, and turns malformed input into a counted reason (a `Malformed` with a
"protocol.problem" code), never an exception.
"""
