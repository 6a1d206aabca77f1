package agentlink

import (
	"context"
	"errors"
	"net"
	"time"
)

// TODO(helper): replace this file with the real implementation.

// HybridOptions bounds DialHybrid's retries.
type HybridOptions struct {
	// AttemptTimeout bounds one connect plus CONNECT/OK exchange.
	AttemptTimeout time.Duration
	// RetryInterval is the pause between attempts.
	RetryInterval time.Duration
}

// DialHybrid connects to agent port through a hybrid vsock Unix socket,
// retrying until the agent answers or ctx ends.
func DialHybrid(ctx context.Context, udsPath string, port uint32, opts HybridOptions) (net.Conn, error) {
	return nil, errors.New("not implemented")
}

// SerialMux is the host end of the multiplexed virtio-serial transport.
type SerialMux struct{}

// NewSerialMux returns a SerialMux for the QEMU chardev socket at path.
func NewSerialMux(path string) *SerialMux { return &SerialMux{} }

// DialAgent opens a stream to the agent's port.
func (m *SerialMux) DialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	return nil, errors.New("not implemented")
}

// Close ends the session and every stream on it.
func (m *SerialMux) Close() error { return nil }

// ServeSerial serves the agent side of the multiplexed transport on a
// virtio-serial port device until ctx ends.
func ServeSerial(ctx context.Context, device string, h Handler) error {
	return errors.New("not implemented")
}

// ServeVsock serves the given AF_VSOCK ports until ctx ends.
func ServeVsock(ctx context.Context, ports []uint32, h Handler) error {
	return errors.New("not implemented")
}

// ServeHybrid serves the hybrid vsock protocol on a Unix socket at path
// until ctx ends.
func ServeHybrid(ctx context.Context, path string, h Handler) error {
	return errors.New("not implemented")
}
