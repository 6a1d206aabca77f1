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
//
// The package moves bytes only. What flows on each agent port is defined by
// package agentproto, and serving a port is up to the Handler.
//
// # Serial session handshake
//
// A virtio-serial port is one ordered byte stream, and the guest end of
// it behaves as follows. QEMU serves one host connection at a time and
// queues the others. While no host is connected, the guest reads EOF on
// every read, and a guest write blocks until the next host connects and
// is then delivered to that new connection. Because of this, each host
// connection runs one session, opened by a handshake, and the streams of
// a session are multiplexed with yamux (github.com/hashicorp/yamux):
//
//  1. The host connects to QEMU's chardev socket and writes
//     "HEARTH-HELLO <nonce>\n" in one write. The nonce is 16 fresh random
//     bytes in lower-case hex.
//  2. The agent discards everything it reads until it has a complete hello
//     line. If several are buffered, it takes the last one. It then starts a
//     new write epoch: one mutex serialises all writes to the port, so a
//     write of the previous session still in progress completes first, and
//     every later write of an earlier session fails. It writes
//     "HEARTH-ACK <nonce>\n" and starts a yamux server session.
//  3. The host discards everything it reads until the last bytes are exactly
//     its ack line. The discarded bytes are stale writes of earlier
//     sessions. It then starts a yamux client session on the connection.
//  4. Every yamux stream opens with the CONNECT/OK exchange.
//
// The agent ends a session when the port reads EOF (the host disconnected)
// or when a keepalive ping fails. It also ends it when a byte other than
// the yamux version (0) starts a frame header, because that byte starts a
// new host's hello. Such a hello arrives without an EOF before it when the
// host reconnects before the guest kernel reports the disconnect. The host ends a session when
// its connection breaks or a keepalive ping fails, and the next DialAgent
// reconnects. A connection whose hello gets no ack within the handshake
// attempt timeout is dropped, and the host stays away for a pause so that
// the agent reads EOF and drops a frame it was in the middle of.
package agentlink

import (
	"context"
	"net"
)

// Handler serves one accepted stream for an agent port. It owns conn and
// must close it.
type Handler func(ctx context.Context, port uint32, conn net.Conn)
