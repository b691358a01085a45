"""Names the policy language knows: protocols, services, ICMP types and codes, DSCP classes."""

from __future__ import annotations

PROTOCOLS: dict[str, int] = {
    "icmp": 1, "igmp": 2, "ipip": 4, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
    "icmpv6": 58, "icmp6": 58, "ipv6-icmp": 58, "ospf": 89, "pim": 103, "vrrp": 112,
    "sctp": 132, "udplite": 136,
}  # fmt: skip

# Well-known services (the common part of /etc/services, fixed here so a policy means the
# same on every machine).
SERVICES: dict[str, int] = {
    "ftp-data": 20, "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "dns": 53,
    "bootps": 67, "bootpc": 68, "tftp": 69, "gopher": 70, "finger": 79, "http": 80, "www": 80,
    "kerberos": 88, "pop3": 110, "sunrpc": 111, "ident": 113, "ntp": 123, "epmap": 135,
    "netbios-ns": 137, "netbios-dgm": 138, "netbios-ssn": 139, "imap": 143, "snmp": 161,
    "snmp-trap": 162, "bgp": 179, "irc": 194, "ldap": 389, "https": 443, "microsoft-ds": 445,
    "smb": 445, "isakmp": 500, "syslog": 514, "submission": 587, "ldaps": 636, "rsync": 873,
    "imaps": 993, "pop3s": 995, "socks": 1080, "openvpn": 1194, "ms-sql-s": 1433,
    "mssql": 1433, "radius": 1812, "radius-acct": 1813, "nfs": 2049, "mysql": 3306,
    "rdp": 3389, "ms-wbt-server": 3389, "ipsec-nat-t": 4500, "sip": 5060, "sips": 5061,
    "postgresql": 5432, "amqp": 5672, "vnc": 5900, "x11": 6000, "redis": 6379, "irc-alt": 6667,
    "http-alt": 8080, "https-alt": 8443, "wireguard": 51820, "mdns": 5353, "llmnr": 5355,
    "memcache": 11211, "mongodb": 27017, "prometheus": 9090,
}  # fmt: skip

ICMP_TYPES: dict[str, int] = {
    "echo-reply": 0, "destination-unreachable": 3, "unreachable": 3, "source-quench": 4,
    "redirect": 5, "echo-request": 8, "router-advertisement": 9, "router-solicitation": 10,
    "time-exceeded": 11, "parameter-problem": 12, "timestamp-request": 13,
    "timestamp-reply": 14, "info-request": 15, "info-reply": 16, "address-mask-request": 17,
    "address-mask-reply": 18,
}  # fmt: skip

ICMPV6_TYPES: dict[str, int] = {
    "destination-unreachable": 1, "unreachable": 1, "packet-too-big": 2, "time-exceeded": 3,
    "parameter-problem": 4, "echo-request": 128, "echo-reply": 129, "mld-listener-query": 130,
    "mld-listener-report": 131, "mld-listener-done": 132, "mld-listener-reduction": 132,
    "nd-router-solicit": 133, "nd-router-advert": 134, "nd-neighbor-solicit": 135,
    "nd-neighbor-advert": 136, "nd-redirect": 137, "router-renumbering": 138,
    "ind-neighbor-solicit": 141, "ind-neighbor-advert": 142, "mld2-listener-report": 143,
}  # fmt: skip

ICMP_CODES: dict[str, int] = {
    "net-unreachable": 0, "host-unreachable": 1, "prot-unreachable": 2, "port-unreachable": 3,
    "frag-needed": 4, "net-prohibited": 9, "host-prohibited": 10, "admin-prohibited": 13,
}  # fmt: skip

ICMPV6_CODES: dict[str, int] = {
    "no-route": 0, "admin-prohibited": 1, "addr-unreachable": 3, "port-unreachable": 4,
    "policy-fail": 5, "reject-route": 6,
}  # fmt: skip

# Family-neutral reject codes (nftables' icmpx): the value is nft's own numbering.
ICMPX_CODES: dict[str, int] = {
    "no-route": 0, "port-unreachable": 1, "host-unreachable": 2, "admin-prohibited": 3,
}  # fmt: skip
# What each icmpx code is in ICMP and in ICMPv6.
ICMPX_TO_ICMP: dict[int, int] = {0: 0, 1: 3, 2: 1, 3: 13}
ICMPX_TO_ICMPV6: dict[int, int] = {0: 0, 1: 4, 2: 3, 3: 1}

# DSCP classes (RFC 2474, 2597, 3246, 5865).
DSCP: dict[str, int] = {
    "cs0": 0, "cs1": 8, "cs2": 16, "cs3": 24, "cs4": 32, "cs5": 40, "cs6": 48, "cs7": 56,
    "af11": 10, "af12": 12, "af13": 14, "af21": 18, "af22": 20, "af23": 22,
    "af31": 26, "af32": 28, "af33": 30, "af41": 34, "af42": 36, "af43": 38,
    "ef": 46, "va": 44, "le": 1,
}  # fmt: skip

# Suricata's convention: 1 is the most severe.
SEVERITIES: dict[str, int] = {"critical": 1, "high": 1, "medium": 2, "low": 3, "info": 4}

ACTION_ALIASES: dict[str, str] = {"pass": "accept", "block": "drop"}

TCP_FLAG_LETTERS: dict[str, int] = {
    "F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "W": 0x80,
    "C": 0x80,
}  # fmt: skip

DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
RATE_UNITS: dict[str, float] = {
    "s": 1, "second": 1, "m": 60, "minute": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400,
}  # fmt: skip

# ISO 3166-1 alpha-2 country codes, as the country database writes them (DB-IP's data has
# exactly these, and XK for Kosovo). Codes in the user-assigned ranges (AA, QM-QZ, XA-XZ, ZZ)
# are also valid in a policy: a site file may give a lab or a branch one (`country XX`).
_COUNTRY_TEXT = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ
EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW
GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY
KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV
MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY
QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG
TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS XK YE YT ZA
ZM ZW
"""
COUNTRY_CODES = frozenset(_COUNTRY_TEXT.split())
# Codes people write that ISO spells otherwise.
COUNTRY_ALIASES = {"UK": "GB", "EL": "GR"}


def user_assigned_country(code: str) -> bool:
    """AA, QM-QZ, XA-XZ and ZZ: ISO leaves these to users (a site file's `country XX`)."""
    return code in ("AA", "ZZ") or (code[0] == "Q" and "M" <= code[1] <= "Z") or code[0] == "X"
