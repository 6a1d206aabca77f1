package network

// TAPOptions configures CreateTAP and DeleteTAP.
type TAPOptions struct {
	// NetNSPath is the network namespace the TAP lives in, as a path such
	// as /var/run/netns/NAME or /proc/PID/ns/net. Empty means the calling
	// thread's namespace, which is the process's unless the caller has
	// switched its thread with setns.
	NetNSPath string
	// User, when not nil, owns the TAP, so a process running as that user
	// and group (a jailed Firecracker) may open it without CAP_NET_ADMIN.
	// DeleteTAP ignores it.
	User *TAPUser
}

// TAPUser is the owner user and group of a TAP device.
type TAPUser struct {
	UID uint32
	GID uint32
}
