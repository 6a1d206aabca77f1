package network

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const tunDevice = "/dev/net/tun"

// CreateTAP creates a persistent TAP device and configures its host end as
// a point-to-point link to one guest. The device gets the address
// gateway/32 with peer guest/32 (as "ip addr add GATEWAY/32 peer GUEST/32"
// does), and the link is set up. Many TAPs may have the same gateway
// address, because each routes only its own peer.
//
// The device has one queue and no packet information header, as QEMU
// (-netdev tap,ifname=NAME,script=no,downscript=no) and Firecracker
// (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) expect when they open it. It survives
// the process that created it until DeleteTAP.
//
// CreateTAP fails with an error wrapping ErrExists when a network device
// of that name exists, and ErrUnavailable when /dev/net/tun is missing or
// the caller lacks CAP_NET_ADMIN. On failure no device is left behind.
func CreateTAP(name string, gateway, guest net.IP, opts TAPOptions) error {
	if err := validateLinkName(name); err != nil {
		return fmt.Errorf("create tap %q: %w", name, err)
	}
	gateway4, guest4 := gateway.To4(), guest.To4()
	if gateway4 == nil || guest4 == nil {
		return fmt.Errorf("create tap %q: gateway %s and guest %s must both be IPv4 addresses: %w", name, gateway, guest, ErrInvalid)
	}
	err := inNetNS(opts.NetNSPath, func() error {
		return createTAP(name, gateway4, guest4, opts.User)
	})
	if err != nil {
		return fmt.Errorf("create tap %q: %w", name, err)
	}
	return nil
}

// createTAP creates and configures the TAP in the calling thread's network
// namespace.
func createTAP(name string, gateway, guest net.IP, user *TAPUser) (err error) {
	if err := makePersistentTAP(name, user); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if derr := deleteTAP(name); derr != nil {
				err = errors.Join(err, fmt.Errorf("remove the partly configured tap: %w", derr))
			}
		}
	}()

	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up the new device: %w", err)
	}

	host32 := net.CIDRMask(32, 32)
	addr := &netlink.Addr{
		IPNet: &net.IPNet{IP: gateway, Mask: host32},
		Peer:  &net.IPNet{IP: guest, Mask: host32},
	}
	if err := h.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add address %s peer %s: %w", gateway, guest, explainPermission(err))
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set link up: %w", explainPermission(err))
	}
	return nil
}

// makePersistentTAP creates the device through /dev/net/tun in the calling
// thread's network namespace.
func makePersistentTAP(name string, user *TAPUser) error {
	fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return explainTUNOpen(err)
	}
	// Until TUNSETPERSIST succeeds, closing the descriptor destroys the
	// device, which cleans up after every failure below.
	defer unix.Close(fd)

	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("device name: %w: %w", err, ErrInvalid)
	}
	// IFF_TUN_EXCL makes TUNSETIFF fail with EBUSY rather than attach to
	// an existing device of the same name. The VMM sets IFF_NO_PI and
	// IFF_VNET_HDR again when it opens the device. Only the queue mode
	// must match, and without IFF_MULTI_QUEUE the device has one queue.
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("a network device with this name already exists: %w", ErrExists)
		}
		return fmt.Errorf("TUNSETIFF: %w", explainPermission(err))
	}

	if user != nil {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, int(user.UID)); err != nil {
			return fmt.Errorf("TUNSETOWNER %d: %w", user.UID, err)
		}
		if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, int(user.GID)); err != nil {
			return fmt.Errorf("TUNSETGROUP %d: %w", user.GID, err)
		}
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("TUNSETPERSIST: %w", err)
	}
	return nil
}

// DeleteTAP deletes a TAP device. It succeeds when the device or its
// network namespace does not exist, so it is idempotent. When the device
// of that name is not a TAP, it returns an error and deletes nothing.
func DeleteTAP(name string, opts TAPOptions) error {
	if opts.NetNSPath != "" {
		// A namespace that is gone took its devices with it.
		if _, err := os.Stat(opts.NetNSPath); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
	}
	err := inNetNS(opts.NetNSPath, func() error {
		return deleteTAP(name)
	})
	if err != nil {
		return fmt.Errorf("delete tap %q: %w", name, err)
	}
	return nil
}

// deleteTAP deletes the TAP in the calling thread's network namespace.
func deleteTAP(name string) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()

	link, err := h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up device: %w", err)
	}
	if link.Type() != "tuntap" {
		return fmt.Errorf("device is a %s, not a TAP; delete it by hand if it is left over", link.Type())
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link: %w", explainPermission(err))
	}
	return nil
}

// deleteTAPForReclaim deletes the TAP of a stale lease.
func deleteTAPForReclaim(name, netnsPath string) error {
	return DeleteTAP(name, TAPOptions{NetNSPath: netnsPath})
}

// deleteDetachedTAP deletes the TAP name if no process has it open, and
// reports whether it did. The kernel turns a TAP's carrier on when a
// process attaches a queue and off when the last one detaches, so a
// device without carrier is an orphan of a process that exited without
// deleting it.
func deleteDetachedTAP(name string, opts TAPOptions) (bool, error) {
	deleted := false
	err := inNetNS(opts.NetNSPath, func() error {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("look up device: %w", err)
		}
		tap, ok := link.(*netlink.Tuntap)
		if !ok || tap.Mode != netlink.TUNTAP_MODE_TAP {
			return nil
		}
		carrier, err := linkCarrier(link.Attrs().Index)
		if err != nil || carrier {
			return err
		}
		if err := netlink.LinkDel(link); err != nil {
			return fmt.Errorf("delete link: %w", err)
		}
		deleted = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("delete detached tap %q: %w", name, err)
	}
	return deleted, nil
}

// linkCarrier returns the IFLA_CARRIER attribute of a link. The netlink
// package does not decode it. Unlike IFF_LOWER_UP it is reported while
// the link is down too.
func linkCarrier(index int) (bool, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	replies, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return false, fmt.Errorf("get link %d: %w", index, err)
	}
	if len(replies) != 1 || len(replies[0]) < unix.SizeofIfInfomsg {
		return false, fmt.Errorf("get link %d: got %d replies, want 1", index, len(replies))
	}
	attrs, err := nl.ParseRouteAttr(replies[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return false, fmt.Errorf("parse link %d: %w", index, err)
	}
	for _, attr := range attrs {
		if attr.Attr.Type == unix.IFLA_CARRIER && len(attr.Value) > 0 {
			return attr.Value[0] != 0, nil
		}
	}
	return false, fmt.Errorf("link %d: reply has no carrier attribute", index)
}

// inNetNS runs fn in the network namespace at path, or directly when path
// is empty.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()

	done := make(chan error, 1)
	go func() { done <- runInNetNS(target, fn) }()
	return <-done
}

// runInNetNS switches the calling thread into target, runs fn and switches
// back. setns affects only the calling OS thread, so the goroutine stays
// locked to it. It must run on a goroutine of its own: when switching back
// fails the thread stays locked, and the runtime ends a locked thread when
// its goroutine exits, so no other goroutine ever runs in target.
func runInNetNS(target netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("open current network namespace: %w", err)
	}
	defer orig.Close()

	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(fnErr, fmt.Errorf("return to the original network namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// validateLinkName applies the kernel's rules for interface names: 1 to
// 15 bytes, no '/', ':' or white space, and not "." or "..".
func validateLinkName(name string) error {
	if name == "" || len(name) > unix.IFNAMSIZ-1 || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n\r\v\f") {
		return fmt.Errorf("invalid device name, want 1 to %d bytes without '/', ':' or spaces: %w", unix.IFNAMSIZ-1, ErrInvalid)
	}
	return nil
}

func explainTUNOpen(err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("open %s: %w: %w; load the tun module (modprobe tun), or in a container pass the device in (--device %s)", tunDevice, ErrUnavailable, err, tunDevice)
	case errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		return fmt.Errorf("open %s: %w: %w; load the tun module (modprobe tun)", tunDevice, ErrUnavailable, err)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("open %s: %w: %w; run hearth as root or with CAP_NET_ADMIN", tunDevice, ErrUnavailable, err)
	}
	return fmt.Errorf("open %s: %w", tunDevice, err)
}

// explainPermission adds what to do to a permission error.
func explainPermission(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: %w; run hearth as root or with CAP_NET_ADMIN", ErrUnavailable, err)
	}
	return err
}
