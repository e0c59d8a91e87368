package cluster

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// InternalAddr is the base URL other instances reach this one at: addr
// (INTERNAL_ADDR), where "{ip}" stands for this host's first non-loopback
// address (one setting for every replica of a compose service), or, when
// addr is empty, http://host:port. A host that listens on every address
// needs addr.
func InternalAddr(addr, host string, port int) (string, error) {
	if addr == "" {
		if unspecified(host) {
			return "", fmt.Errorf("config: HOST=%q listens on every address: set INTERNAL_ADDR to the URL other instances reach this one at (e.g. http://{ip}:%d)", host, port)
		}
		return "http://" + net.JoinHostPort(host, strconv.Itoa(port)), nil
	}
	if strings.Contains(addr, "{ip}") {
		ip, err := hostIP()
		if err != nil {
			return "", fmt.Errorf("config: INTERNAL_ADDR=%s: %w", addr, err)
		}
		h := ip.String()
		if ip.To4() == nil {
			h = "[" + h + "]"
		}
		addr = strings.ReplaceAll(addr, "{ip}", h)
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return strings.TrimSuffix(addr, "/"), nil
}

func unspecified(host string) bool {
	ip := net.ParseIP(host)
	return host == "" || ip != nil && ip.IsUnspecified()
}

// hostIP returns the first global unicast address of an interface that is
// up, IPv4 first.
func hostIP() (net.IP, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var v6 net.IP
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok || !n.IP.IsGlobalUnicast() {
				continue
			}
			if n.IP.To4() != nil {
				return n.IP, nil
			}
			if v6 == nil {
				v6 = n.IP
			}
		}
	}
	if v6 != nil {
		return v6, nil
	}
	return nil, fmt.Errorf("no non-loopback address found")
}
