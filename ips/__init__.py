"""ipsctl: an inline firewall and intrusion prevention system."""

__version__ = "0.1.0"
