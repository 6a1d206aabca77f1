package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func requireTAPSupport(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and TAP devices; run the tests as root")
	}
	if _, err := os.Stat(tunDevice); err != nil {
		t.Skipf("needs %s: %v; load the tun module (modprobe tun)", tunDevice, err)
	}
}

// inNewNetNS runs fn with the calling goroutine locked to a thread that is
// switched into a new, empty network namespace, so every device the test
// creates stays out of the host's namespace. The namespace disappears with
// its last reference after fn returns.
func inNewNetNS(t *testing.T, fn func(ns netns.NsHandle)) {
	t.Helper()
	requireTAPSupport(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("open current network namespace: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		// The thread may be in the new namespace already, so it stays
		// locked and ends with the test's goroutine.
		t.Fatalf("create network namespace: %v", err)
	}
	defer func() {
		ns.Close()
		if err := netns.Set(orig); err != nil {
			t.Errorf("return to the original network namespace: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	fn(ns)
}

// nsPath returns a path that opens the namespace behind handle.
func nsPath(ns netns.NsHandle) string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))
}

// checkTAP checks that name is a configured point-to-point TAP in the
// namespace h is bound to.
func checkTAP(t *testing.T, h *netlink.Handle, name, gateway, guest string) {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("LinkByName(%s): %v", name, err)
	}
	tap, ok := link.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("%s: got link type %s, want tuntap", name, link.Type())
	}
	if tap.Mode != netlink.TUNTAP_MODE_TAP {
		t.Errorf("%s: got mode %v, want tap", name, tap.Mode)
	}
	if tap.Flags&netlink.TUNTAP_NO_PI == 0 {
		t.Errorf("%s: got flags %#x, want IFF_NO_PI", name, tap.Flags)
	}
	if tap.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		t.Errorf("%s: got flags %#x, want a single-queue device", name, tap.Flags)
	}
	if tap.NonPersist {
		t.Errorf("%s: got a non-persistent device, want persistent", name)
	}
	if tap.Flags&netlink.TUNTAP_VNET_HDR == 0 {
		t.Errorf("%s: got flags %#x, want IFF_VNET_HDR", name, tap.Flags)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s: link is down, want up", name)
	}

	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("AddrList(%s): %v", name, err)
	}
	if len(addrs) != 1 {
		t.Fatalf("%s: got %d IPv4 addresses %v, want 1", name, len(addrs), addrs)
	}
	if got, want := addrs[0].IPNet.String(), gateway+"/32"; got != want {
		t.Errorf("%s: got local address %s, want %s", name, got, want)
	}
	if addrs[0].Peer == nil {
		t.Errorf("%s: got no peer address, want %s/32", name, guest)
	} else if got, want := addrs[0].Peer.String(), guest+"/32"; got != want {
		t.Errorf("%s: got peer %s, want %s", name, got, want)
	}

	routes, err := h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("RouteList(%s): %v", name, err)
	}
	found := false
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == guest+"/32" {
			found = true
		}
	}
	if !found {
		t.Errorf("%s: got routes %v, want one to %s/32", name, routes, guest)
	}
}

func checkNoLink(t *testing.T, h *netlink.Handle, name string) {
	t.Helper()
	_, err := h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if !errors.As(err, &notFound) {
		t.Errorf("LinkByName(%s): got %v, want link not found", name, err)
	}
}

func currentNSHandle(t *testing.T) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func TestCreateTAPPointToPoint(t *testing.T) {
	inNewNetNS(t, func(netns.NsHandle) {
		h := currentNSHandle(t)
		gateway := net.ParseIP("172.20.0.1")
		for _, guest := range []string{"172.20.0.2", "172.20.0.3"} {
			name := "hth" + guest[len(guest)-1:]
			if err := CreateTAP(name, gateway, net.ParseIP(guest), TAPOptions{}); err != nil {
				t.Fatalf("CreateTAP(%s): %v", name, err)
			}
		}
		// Both have the gateway address, each with its own peer route.
		checkTAP(t, h, "hth2", "172.20.0.1", "172.20.0.2")
		checkTAP(t, h, "hth3", "172.20.0.1", "172.20.0.3")

		for _, name := range []string{"hth2", "hth3"} {
			for i := range 2 {
				if err := DeleteTAP(name, TAPOptions{}); err != nil {
					t.Fatalf("DeleteTAP(%s) call %d: %v", name, i, err)
				}
			}
			checkNoLink(t, h, name)
		}
	})
}

func TestCreateTAPUser(t *testing.T) {
	inNewNetNS(t, func(netns.NsHandle) {
		h := currentNSHandle(t)
		user := &TAPUser{UID: 1234, GID: 5678}
		err := CreateTAP("hth2", net.ParseIP("10.0.0.1"), net.ParseIP("10.0.0.2"), TAPOptions{User: user})
		if err != nil {
			t.Fatal(err)
		}
		defer DeleteTAP("hth2", TAPOptions{})

		link, err := h.LinkByName("hth2")
		if err != nil {
			t.Fatal(err)
		}
		tap := link.(*netlink.Tuntap)
		if tap.Owner != user.UID || tap.Group != user.GID {
			t.Errorf("got owner %d group %d, want %d %d", tap.Owner, tap.Group, user.UID, user.GID)
		}
	})
}

func TestCreateTAPNameTaken(t *testing.T) {
	inNewNetNS(t, func(netns.NsHandle) {
		h := currentNSHandle(t)
		gateway, guest := net.ParseIP("10.0.0.1"), net.ParseIP("10.0.0.2")
		if err := CreateTAP("hth2", gateway, guest, TAPOptions{}); err != nil {
			t.Fatal(err)
		}
		defer DeleteTAP("hth2", TAPOptions{})
		if err := CreateTAP("hth2", gateway, guest, TAPOptions{}); !errors.Is(err, ErrExists) {
			t.Errorf("second CreateTAP: got %v, want ErrExists", err)
		}
		checkTAP(t, h, "hth2", "10.0.0.1", "10.0.0.2")

		bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "hth9"}}
		if err := h.LinkAdd(bridge); err != nil {
			t.Fatalf("add bridge link: %v", err)
		}
		if err := CreateTAP("hth9", gateway, net.ParseIP("10.0.0.9"), TAPOptions{}); !errors.Is(err, ErrExists) {
			t.Errorf("CreateTAP over a bridge link: got %v, want ErrExists", err)
		}
		if err := DeleteTAP("hth9", TAPOptions{}); err == nil {
			t.Errorf("DeleteTAP of a bridge link: got nil, want an error")
		}
		if _, err := h.LinkByName("hth9"); err != nil {
			t.Errorf("bridge link after DeleteTAP: got %v, want it kept", err)
		}
	})
}

func TestCreateTAPInvalidArguments(t *testing.T) {
	tests := []struct {
		name, device, gateway, guest string
	}{
		{"empty name", "", "10.0.0.1", "10.0.0.2"},
		{"long name", "hth0123456789abc", "10.0.0.1", "10.0.0.2"},
		{"slash in name", "hth/2", "10.0.0.1", "10.0.0.2"},
		{"ipv6 guest", "hth2", "10.0.0.1", "fd00::2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CreateTAP(tc.device, net.ParseIP(tc.gateway), net.ParseIP(tc.guest), TAPOptions{})
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("got %v, want ErrInvalid", err)
			}
		})
	}
}

func TestCreateTAPInNamespace(t *testing.T) {
	inNewNetNS(t, func(current netns.NsHandle) {
		h := currentNSHandle(t)
		// netns.New switches the thread into the new namespace, so switch back.
		other, err := netns.New()
		if err != nil {
			t.Fatalf("create second network namespace: %v", err)
		}
		defer other.Close()
		if err := netns.Set(current); err != nil {
			t.Fatalf("return to the test namespace: %v", err)
		}
		otherHandle, err := netlink.NewHandleAt(other, unix.NETLINK_ROUTE)
		if err != nil {
			t.Fatal(err)
		}
		defer otherHandle.Close()
		opts := TAPOptions{NetNSPath: nsPath(other)}

		if err := CreateTAP("hth2", net.ParseIP("10.0.0.1"), net.ParseIP("10.0.0.2"), opts); err != nil {
			t.Fatalf("CreateTAP: %v", err)
		}
		checkTAP(t, otherHandle, "hth2", "10.0.0.1", "10.0.0.2")
		checkNoLink(t, h, "hth2")

		if err := DeleteTAP("hth2", opts); err != nil {
			t.Fatalf("DeleteTAP: %v", err)
		}
		checkNoLink(t, otherHandle, "hth2")
		if err := DeleteTAP("hth2", TAPOptions{NetNSPath: "/nonexistent/netns"}); err != nil {
			t.Errorf("DeleteTAP in a missing namespace: got %v, want nil", err)
		}
	})
}

func newRealAllocator(t *testing.T, owner Owner) *Allocator {
	t.Helper()
	pool, err := NewPool(Config{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAllocator(pool, AllocatorConfig{Owner: owner, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAllocatorAcquireReleaseTAP(t *testing.T) {
	inNewNetNS(t, func(netns.NsHandle) {
		h := currentNSHandle(t)
		a := newRealAllocator(t, Owner{})
		ctx := context.Background()

		l, err := a.Acquire(ctx, "sb-1")
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		checkTAP(t, h, l.TAP, "172.20.0.1", "172.20.0.2")

		if err := a.Release(ctx, "sb-1"); err != nil {
			t.Fatalf("Release: %v", err)
		}
		checkNoLink(t, h, l.TAP)
		if _, err := a.Pool().Lookup("sb-1"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup after Release: got %v, want ErrNotFound", err)
		}
	})
}

func TestAllocatorAcquireFailureReleasesLease(t *testing.T) {
	inNewNetNS(t, func(netns.NsHandle) {
		h := currentNSHandle(t)
		a := newRealAllocator(t, Owner{})
		ctx := context.Background()

		// A device that is not a TAP has the first lease's name.
		bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "hth2"}}
		if err := h.LinkAdd(bridge); err != nil {
			t.Fatalf("add bridge link: %v", err)
		}
		if _, err := a.Acquire(ctx, "sb-1"); !errors.Is(err, ErrExists) {
			t.Errorf("Acquire over a bridge link: got %v, want ErrExists", err)
		}
		if _, err := h.LinkByName("hth2"); err != nil {
			t.Errorf("bridge link after failed Acquire: got %v, want it kept", err)
		}

		_, err := a.AcquireWith(ctx, "sb-2", TAPOptions{NetNSPath: "/nonexistent/netns"})
		if err == nil {
			t.Errorf("Acquire in a missing namespace: got nil, want an error")
		}

		leases, err := a.Pool().List()
		if err != nil {
			t.Fatal(err)
		}
		if len(leases) != 0 {
			t.Errorf("leases after failed Acquires: got %v, want none", leases)
		}
	})
}

func TestAllocatorReplacesOrphanTAP(t *testing.T) {
	inNewNetNS(t, func(netns.NsHandle) {
		h := currentNSHandle(t)
		// A leftover TAP with another address and no process attached.
		if err := CreateTAP("hth2", net.ParseIP("10.9.0.1"), net.ParseIP("10.9.0.2"), TAPOptions{}); err != nil {
			t.Fatal(err)
		}
		a := newRealAllocator(t, Owner{})
		ctx := context.Background()

		l, err := a.Acquire(ctx, "sb-1")
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		checkTAP(t, h, l.TAP, "172.20.0.1", "172.20.0.2")
		if err := a.Release(ctx, "sb-1"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestAllocatorKeepsAttachedTAP(t *testing.T) {
	inNewNetNS(t, func(netns.NsHandle) {
		h := currentNSHandle(t)
		// A TAP that a process still has open, as a running VMM would.
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: "hth2"},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI,
			Queues:    1,
		}
		if err := h.LinkAdd(tap); err != nil {
			t.Fatalf("add attached tap: %v", err)
		}
		defer func() {
			for _, f := range tap.Fds {
				f.Close()
			}
			DeleteTAP("hth2", TAPOptions{})
		}()

		a := newRealAllocator(t, Owner{})
		if _, err := a.Acquire(context.Background(), "sb-1"); !errors.Is(err, ErrExists) {
			t.Errorf("Acquire over an attached tap: got %v, want ErrExists", err)
		}
		if _, err := h.LinkByName("hth2"); err != nil {
			t.Errorf("attached tap after Acquire: got %v, want it kept", err)
		}
	})
}

func TestReclaimDeletesStaleTAP(t *testing.T) {
	inNewNetNS(t, func(netns.NsHandle) {
		h := currentNSHandle(t)
		crashed := newRealAllocator(t, deadOwner(t))
		l, err := crashed.Acquire(context.Background(), "sb-1")
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		checkTAP(t, h, l.TAP, "172.20.0.1", "172.20.0.2")

		reclaimed, err := crashed.Pool().ReclaimStale(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(reclaimed) != 1 || reclaimed[0].SandboxID != "sb-1" {
			t.Errorf("reclaimed: got %v, want the lease of sb-1", reclaimed)
		}
		checkNoLink(t, h, l.TAP)
	})
}

func TestTAPErrorsSayWhatToDo(t *testing.T) {
	tests := []struct {
		name        string
		err         error
		wantKind    error
		wantMessage string
	}{
		{"tun missing", explainTUNOpen(unix.ENOENT), ErrUnavailable, "modprobe tun"},
		{"tun driver missing", explainTUNOpen(unix.ENODEV), ErrUnavailable, "modprobe tun"},
		{"tun not readable", explainTUNOpen(unix.EACCES), ErrUnavailable, "run hearth as root or with CAP_NET_ADMIN"},
		{"not permitted", explainPermission(unix.EPERM), ErrUnavailable, "run hearth as root or with CAP_NET_ADMIN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !errors.Is(tc.err, tc.wantKind) {
				t.Errorf("got %v, want it to wrap %v", tc.err, tc.wantKind)
			}
			if !strings.Contains(tc.err.Error(), tc.wantMessage) {
				t.Errorf("got %q, want it to contain %q", tc.err, tc.wantMessage)
			}
		})
	}
	if err := explainPermission(unix.EINVAL); errors.Is(err, ErrUnavailable) {
		t.Errorf("explainPermission(EINVAL): got %v, want the error unchanged", err)
	}
}
