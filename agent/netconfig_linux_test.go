package agent

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/hearthvm/hearth/agentproto"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// newTestNamespace creates a network namespace and returns a netlink
// handle bound to it. The calling goroutine's thread enters the new
// namespace only for the unshare and returns to its own at once, so the
// code under test runs on ordinary threads and changes nothing outside
// the namespace, which goes away with the handle.
func newTestNamespace(t *testing.T) *netlink.Handle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating a network namespace needs root; run the test as root")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current network namespace: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Skipf("create a network namespace: %v; run the test as root outside a restricted container", err)
	}
	defer ns.Close()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and is discarded when the goroutine
		// ends, so no other goroutine runs in the test namespace.
		runtime.LockOSThread()
		t.Fatalf("return to the original network namespace: %v", err)
	}

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("open netlink in the test namespace: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

func TestConfigureInterfaceInNamespace(t *testing.T) {
	h := newTestNamespace(t)

	// The test uses a veth pair as the guest's eth0. Both ends stay in
	// the test namespace.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth pair: %v", err)
	}
	link, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := h.LinkByName("peer0")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []netlink.Link{link, peer} {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("bring up %s: %v", l.Attrs().Name, err)
		}
	}

	// The address, route and neighbour of the snapshot's origin.
	old := &netlink.Addr{IPNet: mustIPNet(t, "192.0.2.7/24")}
	if err := h.AddrAdd(link, old); err != nil {
		t.Fatalf("add old address: %v", err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.ParseIP("192.0.2.1")}); err != nil {
		t.Fatalf("add old default route: %v", err)
	}
	staleMAC, _ := net.ParseMAC("02:00:00:00:00:01")
	if err := h.NeighAdd(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4,
		State: netlink.NUD_STALE, IP: net.ParseIP("192.0.2.1"), HardwareAddr: staleMAC}); err != nil {
		t.Fatalf("add old neighbour: %v", err)
	}

	cfg := agentproto.NetConfig{
		Interface: "eth0",
		Address:   netip.MustParsePrefix("198.51.100.20/24"),
		Gateway:   netip.MustParseAddr("198.51.100.1"),
	}
	if err := configureInterface(h, cfg); err != nil {
		t.Fatalf("configureInterface: %v", err)
	}

	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "198.51.100.20/24" {
		t.Errorf("got addresses %v, want only 198.51.100.20/24", addrs)
	}

	routes, err := h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var gateways []string
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			gateways = append(gateways, r.Gw.String())
		}
	}
	if len(gateways) != 1 || gateways[0] != "198.51.100.1" {
		t.Errorf("got default routes via %v, want one via 198.51.100.1", gateways)
	}

	neighs, err := h.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		if n.IP.Equal(net.ParseIP("192.0.2.1")) {
			t.Errorf("got neighbour %s (state %#x) after reconfiguration, want it flushed", n.IP, n.State)
		}
	}
}

func TestConfigureInterfaceMissingLink(t *testing.T) {
	h := newTestNamespace(t)
	cfg := agentproto.NetConfig{Interface: "eth0", Address: netip.MustParsePrefix("198.51.100.20/24")}
	err := configureInterface(h, cfg)
	if err == nil {
		t.Fatal("got no error for a namespace without eth0, want one")
	}
	if want := "find interface eth0"; !strings.Contains(err.Error(), want) {
		t.Errorf("got error %q, want it to contain %q", err, want)
	}
}

func mustIPNet(t *testing.T, s string) *net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}
