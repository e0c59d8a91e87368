package inputs

import (
	"errors"
	"net/netip"
	"testing"
)

func TestRefusal(t *testing.T) {
	tests := []struct {
		addr string
		want string // "" means allowed
	}{
		{"93.184.216.34", ""},
		{"8.8.8.8", ""},
		{"2606:4700:4700::1111", ""},
		{"127.0.0.1", "loopback"},
		{"127.0.0.2", "loopback"},
		{"::1", "loopback"},
		{"10.0.0.1", "private"},
		{"172.16.5.4", "private"},
		{"172.31.255.255", "private"},
		{"172.32.0.1", ""},
		{"192.168.1.1", "private"},
		{"fc00::1", "private"},
		{"fd12:3456::1", "private"},
		{"169.254.169.254", "link-local"},
		{"fe80::1", "link-local"},
		{"fe80::1%eth0", "link-local"},
		{"224.0.0.1", "multicast"},
		{"ff02::1", "multicast"},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"0.1.2.3", "reserved (\"this network\")"},
		{"100.64.0.1", "shared (carrier-grade NAT)"},
		{"100.127.255.254", "shared (carrier-grade NAT)"},
		{"100.128.0.1", ""},
		{"255.255.255.255", "reserved"},
		{"::ffff:127.0.0.1", "loopback"},
		{"::ffff:10.1.2.3", "private"},
		{"::ffff:169.254.169.254", "link-local"},
		{"::ffff:8.8.8.8", ""},
		{"64:ff9b::a9fe:a9fe", "link-local"}, // NAT64 of 169.254.169.254
		{"64:ff9b::808:808", ""},
		{"::127.0.0.1", "reserved (IPv4-compatible)"},
		{"fec0::1", "private (site-local)"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			if got := refusal(netip.MustParseAddr(tt.addr)); got != tt.want {
				t.Errorf("refusal(%s) = %q, want %q", tt.addr, got, tt.want)
			}
		})
	}
}

func TestAddrPolicy(t *testing.T) {
	p, err := newAddrPolicy([]string{"LocalHost.", "files.internal"}, []string{"127.0.0.1/32", "10.1.0.0/16", "192.168.7.7"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host, addr string
		ok         bool
	}{
		{"example.com", "93.184.216.34", true},
		{"127.0.0.1", "127.0.0.1", true},
		{"evil.example", "127.0.0.1", true}, // admitted by CIDR, whatever the host
		{"evil.example", "::ffff:127.0.0.1", true},
		{"evil.example", "127.0.0.2", false},
		{"localhost", "::1", true}, // admitted by host name
		{"files.internal", "10.9.9.9", true},
		{"evil.example", "10.1.200.3", true},
		{"evil.example", "10.2.0.1", false},
		{"evil.example", "192.168.7.7", true},
		{"evil.example", "192.168.7.8", false},
		{"evil.example", "169.254.169.254", false},
	}
	for _, tt := range tests {
		err := p.check(tt.host, netip.MustParseAddr(tt.addr))
		if (err == nil) != tt.ok {
			t.Errorf("check(%s, %s) = %v, want ok=%v", tt.host, tt.addr, err, tt.ok)
		}
		var re *refusedError
		if err != nil && !errors.As(err, &re) {
			t.Errorf("check(%s, %s) = %T, want *refusedError", tt.host, tt.addr, err)
		}
	}
	if _, err := newAddrPolicy(nil, []string{"not-a-cidr"}); err == nil {
		t.Error("newAddrPolicy accepted a malformed CIDR")
	}
}
