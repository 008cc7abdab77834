"""Where webhooks may be sent: never to private, loopback, link-local or metadata addresses
(an API key holder must not make Loanwatch probe the internal network), checked at
registration and again at delivery time, since DNS can change in between (rebinding): the
dispatcher checks each URL per claim, and the connection goes to the very addresses its own
look-up checked (transport.AsyncioBackend)."""

import asyncio
import ipaddress
import re
import socket
import unicodedata
from urllib.parse import urlsplit

# A label of a host name (RFC 1123: letters, digits, hyphens between), "_" too, which DNS
# serves and receivers use; a space or any other character never resolves, so a delivery to
# it would retry for days.
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\Z")


_NUMBER = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")


class TargetNotAllowed(ValueError):
    pass


# IPv6 prefixes that carry an IPv4 address in their last 32 bits, which a network that
# translates them (NAT64, as on IPv6-only clouds) connects to: 64:ff9b::10.0.0.1 reaches
# 10.0.0.1; so does SIIT's IPv4-translated ::ffff:0:a.b.c.d (RFC 2765, a tester's). IPv4-mapped
# (::ffff:0:0/96) and 6to4 (2002::/16) addresses ipaddress unwraps.
_CARRY_IPV4 = (
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("::/96"),
    ipaddress.ip_network("::ffff:0:0:0/96"),
)
# Local-use NAT64 (RFC 8215): a site's own translator, which reaches its own IPv4 network.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
# Not globally reachable by IANA's registries, though Python 3.11's is_global says they are:
# IPv6 site-local, the IPv4 special-purpose block (its dummy address 192.0.0.8), the 6to4 relay
# anycast, IPv6 documentation (RFC 9637) and SRv6 SIDs (a tester's).
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(prefix)
    for prefix in ("fec0::/10", "192.0.0.0/24", "192.88.99.0/24", "3fff::/20", "5f00::/16")
)


def public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    reached: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            reached = [ip.ipv4_mapped]
        elif ip.sixtofour:
            reached.append(ip.sixtofour)
        elif ip in _LOCAL_NAT64:
            return False
        elif any(ip in prefix for prefix in _CARRY_IPV4):
            reached.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return all(
        a.is_global and not a.is_multicast and not any(a in prefix for prefix in _NOT_GLOBAL)
        for a in reached
    )


def parse(url: str) -> tuple[str, int]:
    # urlsplit drops tabs and line breaks ("http://ex\tample.test" is example.test to it),
    # while httpx refuses such a URL at every delivery.
    if any(unicodedata.category(c) == "Cc" for c in url):  # C0, DEL and C1 (U+0085)
        raise TargetNotAllowed("must not contain control characters such as tabs or newlines")
    try:
        parts = urlsplit(url)  # raises on a malformed IPv6 host such as "https://[x"
    except ValueError:
        raise TargetNotAllowed("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetNotAllowed("must be an http(s) URL with a host")
    try:
        port = parts.port
        ascii_host = parts.hostname.encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise TargetNotAllowed("has an invalid host or port") from None
    if port == 0:  # nothing listens there: every delivery would fail, for days
        raise TargetNotAllowed("has an invalid host or port")
    # In brackets only an IPv6 address: urlsplit gives "[v1.x]" (an IPvFuture literal no
    # client connects to) as the host name "v1.x".
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    if not _host_name(ascii_host) or (bracketed and not _ipv6(ascii_host)):
        raise TargetNotAllowed("has an invalid host name")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _host_name(host: str) -> bool:
    """An IP address (an IPv6 one as urlsplit gives it: unbracketed, maybe with a zone) or a
    host name of valid labels, the root's trailing dot allowed."""
    if _ipv6(host):
        return True
    try:
        ipaddress.IPv4Address(host)  # a zone is IPv6's alone ("127.0.0.1%09" was let in)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        # A host ending in a number (decimal, or hexadecimal after 0x) is an IPv4 address, as
        # a browser reads it (WHATWG URL), and not one in dotted decimal ("999.1.1.1",
        # "192.168.1.1." with the root's dot, "example.0x1") never resolves, or resolves only
        # as the C library reads it: a delivery would retry for days (a tester's).
        if _NUMBER.fullmatch(labels[-1]):
            return False
        return all(_LABEL.match(label) for label in labels)
    return True


def _ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host.split("%")[0])
    except ValueError:
        return False
    return True


def refuse_at_registration(url: str) -> None:
    """What registration refuses beyond what delivery checks (an endpoint stored earlier is
    still sent to): a user or password, which every reader of the endpoint, a dashboard key
    included, would see (deliveries are authenticated by their signature), and spaces: sent
    as it is, "/x " asks for "/x%20", a space pasted at the end that the receiver never
    serves (a tester's), and invisible characters (a zero-width space, a byte-order mark)
    likewise."""
    if any(c.isspace() or unicodedata.category(c) == "Cf" for c in url):
        raise TargetNotAllowed(
            "must not contain spaces or invisible characters (a space in a path is written %20)"
        )
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise TargetNotAllowed(
            "must not carry credentials (user:password@): every reader of the endpoint sees "
            "its URL, and each delivery is signed with the endpoint's secret instead"
        )


async def addresses(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    # In the resolver's order of preference, which connecting follows.
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check(url: str, *, allow_private: bool, must_resolve: bool) -> None:
    """Raise TargetNotAllowed for a URL that may not receive webhooks. A name that does not
    resolve passes registration (``must_resolve=False``): delivery checks it again."""
    host, port = parse(url)
    if allow_private:
        return
    # Loopback by definition (RFC 6761), whatever a resolver says: "localhost." and
    # "x.localhost" did not resolve at registration and were let in (a tester's).
    if host.removesuffix(".").rpartition(".")[2] == "localhost":
        raise TargetNotAllowed(f"{host} is a loopback name")
    try:
        found = await addresses(host, port)
    except (OSError, UnicodeError):
        if must_resolve:
            raise TargetNotAllowed(f"{host} does not resolve") from None
        return
    refuse_private(host, found)


def refuse_private(host: str, found: list[str]) -> None:
    blocked = [a for a in found if not public(a)]
    if blocked:
        raise TargetNotAllowed(f"{host} resolves to a non-public address ({blocked[0]})")
