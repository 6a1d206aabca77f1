//go:build linux

package guestinit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// configureNetwork brings up the loopback and, when n is not nil, gives
// n.Interface its address, brings it up and adds the default route. An
// address or route that is already present, as after the kernel's own
// IP autoconfiguration, is kept.
func configureNetwork(ctx context.Context, n *NetConfig) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find interface lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	if n == nil {
		return nil
	}

	var link netlink.Link
	err = waitFor(ctx, linkWait, "interface "+n.Interface, func() (bool, error) {
		var err error
		link, err = netlink.LinkByName(n.Interface)
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("find interface %s: %w", n.Interface, err)
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: prefixToIPNet(n.Address)}
	if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add address %s to %s: %w", n.Address, n.Interface, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up %s: %w", n.Interface, err)
	}
	if !n.Gateway.IsValid() {
		return nil
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Gw:        net.IP(n.Gateway.AsSlice()),
		Family:    netlink.FAMILY_V4,
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("add default route via %s on %s: %w", n.Gateway, n.Interface, err)
	}
	return nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

// writeResolvConf replaces /etc/resolv.conf with one nameserver line per
// server. The file is renamed into place, so a symbolic link there (as a
// systemd image has) is replaced rather than followed.
func writeResolvConf(servers []netip.Addr) error {
	var b strings.Builder
	b.WriteString("# Written by hearth-agent from hearth.dns.\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if err := os.MkdirAll("/etc", 0o755); err != nil {
		return fmt.Errorf("create /etc: %w", err)
	}
	tmp := "/etc/.resolv.conf.hearth"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, "/etc/resolv.conf"); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replace /etc/resolv.conf: %w", err)
	}
	return nil
}
