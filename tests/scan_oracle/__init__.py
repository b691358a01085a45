"""A frozen copy of the scan detectors' probe bookkeeping as it was before it was made cheaper
(main at 5973bd7: ips/detect/scan.py, detectors.py, ackscan.py, slowscan.py, their imports
of each other pointed here): the oracle of tests/pure/test_scanprobe_equivalence.py. Never
imported by ips/; never to be edited, except to follow a change of behaviour made on purpose
in ips/detect (then the oracle must change the same way, and the test says whether it did)."""
