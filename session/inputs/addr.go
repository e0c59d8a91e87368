package inputs

import (
	"fmt"
	"net/netip"
)

// blockedPrefixes lists the address ranges that an input URL may never reach
// unless an allow-list admits them, beyond what netip.Addr's predicates
// already cover (loopback, private, link-local, multicast, unspecified).
var blockedPrefixes = []struct {
	prefix netip.Prefix
	reason string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "reserved (\"this network\")"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared (carrier-grade NAT)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "reserved (IETF protocol assignments)"},
	{netip.MustParsePrefix("192.0.2.0/24"), "reserved (documentation)"},
	{netip.MustParsePrefix("198.18.0.0/15"), "reserved (benchmarking)"},
	{netip.MustParsePrefix("198.51.100.0/24"), "reserved (documentation)"},
	{netip.MustParsePrefix("203.0.113.0/24"), "reserved (documentation)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"}, // includes 255.255.255.255
	{netip.MustParsePrefix("::/96"), "reserved (IPv4-compatible)"},
	{netip.MustParsePrefix("100::/64"), "reserved (discard)"},
	{netip.MustParsePrefix("2001:db8::/32"), "reserved (documentation)"},
	{netip.MustParsePrefix("fec0::/10"), "private (site-local)"},
}

// nat64 is the well-known NAT64 prefix: its addresses reach the IPv4 address
// in their last 32 bits, which is judged instead.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// refusal says why addr may not be connected to, or "" when it may. It
// judges the address itself and any IPv4 address it embeds (IPv4-mapped or
// NAT64), so ::ffff:127.0.0.1 is as loopback as 127.0.0.1.
func refusal(addr netip.Addr) string {
	addr = addr.WithZone("")
	if addr.Is4In6() {
		addr = addr.Unmap()
	}
	if nat64.Contains(addr) {
		b := addr.As16()
		addr = netip.AddrFrom4([4]byte(b[12:]))
	}
	switch {
	case !addr.IsValid():
		return "invalid"
	case addr.IsUnspecified():
		return "unspecified"
	case addr.IsLoopback():
		return "loopback"
	case addr.IsPrivate():
		return "private"
	case addr.IsLinkLocalUnicast():
		return "link-local"
	case addr.IsMulticast():
		return "multicast"
	}
	for _, b := range blockedPrefixes {
		if b.prefix.Contains(addr) {
			return b.reason
		}
	}
	return ""
}

// addrPolicy decides which addresses an input download may connect to.
type addrPolicy struct {
	hosts map[string]bool
	cidrs []netip.Prefix
}

func newAddrPolicy(hosts, cidrs []string) (*addrPolicy, error) {
	p := &addrPolicy{hosts: make(map[string]bool, len(hosts))}
	for _, h := range hosts {
		p.hosts[normalizeHost(h)] = true
	}
	for _, c := range cidrs {
		pr, err := netip.ParsePrefix(c)
		if err != nil {
			a, aerr := netip.ParseAddr(c)
			if aerr != nil {
				return nil, fmt.Errorf("files: allowed CIDR %q: %w", c, err)
			}
			pr = netip.PrefixFrom(a, a.BitLen())
		}
		p.cidrs = append(p.cidrs, pr.Masked())
	}
	return p, nil
}

// check returns a non-nil *refusedError when the connection to addr, made
// for a URL whose host is host, is not allowed.
func (p *addrPolicy) check(host string, addr netip.Addr) error {
	reason := refusal(addr)
	if reason == "" {
		return nil
	}
	if p.hosts[normalizeHost(host)] {
		return nil
	}
	plain := addr.WithZone("")
	for _, c := range p.cidrs {
		if c.Contains(plain) || (plain.Is4In6() && c.Contains(plain.Unmap())) {
			return nil
		}
	}
	return &refusedError{Host: host, Addr: plain, Reason: reason}
}

// refusedError is returned by the dialer when the address a connection
// would reach is refused by the policy.
type refusedError struct {
	Host   string
	Addr   netip.Addr
	Reason string
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("address %s is %s", e.Addr, e.Reason)
}
