package fcdouble

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// checkJailedTAP reports whether a Firecracker jailed as uid and gid could
// open the TAP name in its network namespace. Without CAP_NET_ADMIN,
// TUNSETIFF cannot create a device, so the TAP must already exist there,
// be a single-queue TAP, and have no owner or group other than the jailed
// ones (the kernel's tun_not_capable check). The double does not open the
// device itself.
func checkJailedTAP(name string, uid, gid int) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("Open tap device failed: Error while creating ifreq structure: Operation not permitted (os error 1). Invalid TUN/TAP Backend provided by %s: no such device in the network namespace", name)
	}
	tap, ok := link.(*netlink.Tuntap)
	if !ok || tap.Mode != netlink.TUNTAP_MODE_TAP {
		return fmt.Errorf("Open tap device failed: Invalid argument (os error 22). %s is a %s device, not a TAP", name, link.Type())
	}
	if tap.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		return fmt.Errorf("Open tap device failed: Invalid argument (os error 22). %s is a multi-queue TAP", name)
	}
	// NOTE: the kernel omits an unset owner or group from the link's
	// attributes and the netlink library then reports 0, so the double
	// cannot tell an unset owner from root and accepts both.
	if (tap.Owner != 0 && tap.Owner != uint32(uid)) || (tap.Group != 0 && tap.Group != uint32(gid)) {
		return fmt.Errorf("Open tap device failed: Operation not permitted (os error 1). %s is owned by uid %d gid %d, not the jailed uid %d gid %d",
			name, int32(tap.Owner), int32(tap.Group), uid, gid)
	}
	return nil
}
