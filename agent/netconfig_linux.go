package agent

import (
	"fmt"
	"net"

	"github.com/hearthvm/hearth/agentproto"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ConfigureInterface gives an interface of the current network namespace
// the address of cfg, for a clone restored from a snapshot that still
// carries its origin's address. It removes every IPv4 address of the
// interface, adds the new one, brings the link up, replaces the default
// route with one through cfg.Gateway (when set) and flushes the
// interface's neighbour cache, whose entries belong to the old network.
//
// It changes the machine's network, so only a guest init installs it as
// Options.ConfigureNetwork.
func ConfigureInterface(cfg agentproto.NetConfig) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	if err := configureInterface(h, cfg); err != nil {
		return err
	}
	// Tests drive configureInterface inside a network namespace of their
	// own; the hostname belongs to the UTS namespace, so it is set only
	// here, on the path that runs in a guest.
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			return fmt.Errorf("set hostname %q: %w", cfg.Hostname, err)
		}
	}
	return nil
}

func configureInterface(h *netlink.Handle, cfg agentproto.NetConfig) error {
	link, err := h.LinkByName(cfg.Interface)
	if err != nil {
		return fmt.Errorf("find interface %s: %w", cfg.Interface, err)
	}

	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", cfg.Interface, err)
	}
	for _, a := range addrs {
		// Removing the address also removes the routes through it,
		// the old default route included.
		if err := h.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove address %s from %s: %w", a.IPNet, cfg.Interface, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(cfg.Address.Addr().AsSlice()),
		Mask: net.CIDRMask(cfg.Address.Bits(), 32),
	}}
	if err := h.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add address %s to %s: %w", cfg.Address, cfg.Interface, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up %s: %w", cfg.Interface, err)
	}

	if cfg.Gateway.IsValid() {
		route := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Gw:        net.IP(cfg.Gateway.AsSlice()),
			Family:    netlink.FAMILY_V4,
		}
		if err := h.RouteReplace(route); err != nil {
			return fmt.Errorf("set default route via %s on %s: %w", cfg.Gateway, cfg.Interface, err)
		}
	}
	return flushNeighbours(h, link)
}

// flushNeighbours removes the interface's IPv4 neighbour entries except
// permanent and NOARP ones, as `ip neigh flush dev` does.
func flushNeighbours(h *netlink.Handle, link netlink.Link) error {
	neighs, err := h.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", link.Attrs().Name, err)
	}
	for _, n := range neighs {
		if n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
			continue
		}
		if err := h.NeighDel(&n); err != nil {
			return fmt.Errorf("remove neighbour %s from %s: %w", n.IP, link.Attrs().Name, err)
		}
	}
	return nil
}
