"""Pure translators from a resolved policy to another language: nft.py (libnftables JSON for
the kernel's fast path) and windivert.py (the WinDivert filter of the divert backend)."""
