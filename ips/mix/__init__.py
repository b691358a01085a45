"""`ipsctl mix`: benign and attack captures mixed into one labelled capture (docs/evaluation.md).

labels.py   the labels files (the contract `ipsctl eval` reads)
"""
