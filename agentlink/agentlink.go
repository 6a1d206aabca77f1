// Package agentlink carries streams between the host and hearth-agent.
// Every stream opens with the CONNECT/OK exchange of Firecracker's hybrid
// vsock, whatever carries it, so the code above it is the same on every
// backend:
//
//   - Firecracker: the VM's vsock Unix socket (DialHybrid on the host,
//     AF_VSOCK listeners in the guest).
//   - QEMU without vhost-vsock: one virtio-serial port carrying a
//     multiplexed stream (SerialMux on the host, ServeSerial in the guest).
//   - Test doubles and host-side benchmarks: a Unix socket that speaks the
//     hybrid protocol (ServeHybrid).
package agentlink

import (
	"context"
	"net"
)

// Handler serves one accepted stream for an agent port. It owns conn and
// must close it.
type Handler func(ctx context.Context, port uint32, conn net.Conn)
